"""Distillation, step 1: a teacher labels a sample of the user's table (``cascade label``).

The teacher is the large LLM tier through the running server (``llm_large``), or a column of labels the
user already holds (``column:NAME``: human or batch-LLM labels; gold labels as a control). Labels are
cached in SQLite keyed by (task, teacher, row id) together with a hash of the row's text, committed
after every batch, so an interrupted run resumes where it stopped and an edited row is labelled again.

The sample is uniform (``strategy="uniform"``), or ``"active"``: a uniform seed, then the rows that a
logistic regression (tier 0) trained on the seed is least sure of (:func:`label_active`). Every labelled
row records which sample it came from (``labelled.csv``'s ``sample`` column): calibration uses the
uniform rows only, the i.i.d. sample its guarantee needs.
No Triton import here beyond the gRPC client.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cascade import contract
from cascade.errors import ConfigError, InvalidInput, ServerError
from cascade.export.labelled import ACTIVE, PROB_PREFIX, SAMPLE_COLUMN, UNIFORM

TEACHER_LLM = contract.TIER_NAMES[contract.TIER_LLM_LARGE]
COLUMN_PREFIX = "column:"
DEFAULT_BUDGET = 1000  # rows the teacher labels
DEFAULT_SAMPLE = DEFAULT_BUDGET  # its former name
LABEL_BATCH = 32  # rows per teacher call; the cache is committed after each


STRATEGIES = (UNIFORM, ACTIVE)
#: Active sampling: the uniform seed is half the budget, at least ACTIVE_MIN_SEED rows (all of a smaller
#: budget); the active rows are chosen among a uniform pool of at most ACTIVE_POOL_FACTOR x their number.
ACTIVE_MIN_SEED = 200
ACTIVE_POOL_FACTOR = 20


class SingleClassError(ConfigError):
    """The teacher gave every sampled row one label: nothing to learn, the task stays on the LLM."""


# --------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Table:
    """The rows of a table that have text, read by the table jobs' reader (:mod:`cascade.client.table`): a null
    or empty text cell is no row here (it is never sent to the teacher); ``skipped`` counts them by reason."""

    path: Path
    ids: list[str]  # row ids: the id column's values, or row positions in the file
    texts: list[str]
    frame: object = field(repr=False)  # the pyarrow Table of these rows (for label columns)
    skipped: dict[str, int] = field(default_factory=dict)  # rows without text: "text is null"/"text is empty" -> n

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def skipped_rows(self) -> int:
        return sum(self.skipped.values())


def read_table(path: str | Path, text_column: str = "text", id_column: str | None = None) -> Table:
    """A CSV (or gzipped CSV), Parquet or Arrow IPC table; a missing file or column is a :class:`ConfigError`
    naming what exists. Rows whose text is null, blank or not UTF-8 are left out and counted
    (:attr:`Table.skipped`); ids stay the id column's values or the row positions in the file."""
    import pyarrow as pa

    from cascade.client.table import read_batches, table_schema, text_cells

    path = Path(path)
    schema, _ = table_schema(path, text_column)  # a missing file or an unknown format fails here
    for column in (text_column, id_column):
        if column is not None and column not in schema.names:
            raise ConfigError(f"table {path}: no column {column!r} (columns: {schema.names})")
    # Every CSV column is text, as the user wrote it (pandas' keep_default_na=False): an id "007" stays "007", a
    # label column is read as written, and no column's type is guessed from its first block alone.
    batches = list(read_batches(path, text_column, strings=schema.names))
    frame = pa.Table.from_batches(batches) if batches else schema.empty_table()
    raw, errors = text_cells(frame.column(text_column))
    if id_column:
        values = frame.column(id_column).to_pylist()
        if None in values:
            raise ConfigError(f"table {path}: column {id_column!r} has {values.count(None)} null id(s)")
        ids = [str(v) for v in values]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"table {path}: column {id_column!r} has duplicate ids")
    else:
        ids = [str(i) for i in range(frame.num_rows)]
    keep = [i for i, e in enumerate(errors) if e is None]
    skipped: dict[str, int] = {}
    for e in errors:
        if e is not None:
            reason = "text is not valid UTF-8" if e.startswith("text is not valid UTF-8") else e
            skipped[reason] = skipped.get(reason, 0) + 1
    if len(keep) < frame.num_rows:
        frame = frame.take(pa.array(keep, pa.int64()))
    return Table(path, [ids[i] for i in keep], [raw[i].decode("utf-8") for i in keep], frame, skipped)


def sample_rows(n_rows: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` row positions drawn uniformly without replacement (no labels yet: no stratification)."""
    if n <= 0:
        raise InvalidInput(f"sample size must be positive, got {n}")
    if n > n_rows:
        raise ConfigError(f"the table has {n_rows} rows, fewer than the sample size {n}")
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=n, replace=False))


# --------------------------------------------------------------------------------------------- cache


def _text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class LabelStore:
    """Teacher labels on disk: ``(task, teacher, row_id) -> (text hash, label index, probabilities)``; the
    probabilities (JSON) are the teacher's soft labels, absent for a column teacher and for rows cached before
    they were kept."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS labels (task TEXT, teacher TEXT, row_id TEXT, text_hash TEXT, "
            "label INTEGER, probs TEXT, PRIMARY KEY (task, teacher, row_id))"
        )
        if "probs" not in {row[1] for row in self._db.execute("PRAGMA table_info(labels)")}:
            try:  # a cache from before soft labels; another process (a reader of the same cache) may add it first
                self._db.execute("ALTER TABLE labels ADD COLUMN probs TEXT")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise
        self._db.commit()

    def get(self, task: str, teacher: str, ids: Sequence[str], texts: Sequence[str]) -> dict[str, int]:
        """Cached labels of these rows whose text is unchanged."""
        want = dict(zip(ids, map(_text_hash, texts), strict=True))
        rows = self._db.execute(
            "SELECT row_id, text_hash, label FROM labels WHERE task = ? AND teacher = ?", (task, teacher)
        )
        return {row_id: label for row_id, digest, label in rows if want.get(row_id) == digest}

    def get_probs(self, task: str, teacher: str, ids: Sequence[str], texts: Sequence[str]) -> dict[str, list]:
        """Cached teacher probabilities of these rows whose text is unchanged (rows that have them)."""
        import json

        want = dict(zip(ids, map(_text_hash, texts), strict=True))
        rows = self._db.execute(
            "SELECT row_id, text_hash, probs FROM labels WHERE task = ? AND teacher = ? AND probs IS NOT NULL",
            (task, teacher),
        )
        return {row_id: json.loads(probs) for row_id, digest, probs in rows if want.get(row_id) == digest}

    def put(
        self,
        task: str,
        teacher: str,
        ids: Sequence[str],
        texts: Sequence[str],
        labels: Sequence[int],
        probs: np.ndarray | None = None,
    ) -> None:
        import json

        soft = [None] * len(ids) if probs is None else [json.dumps(np.round(p, 6).tolist()) for p in probs]
        self._db.executemany(
            "INSERT OR REPLACE INTO labels (task, teacher, row_id, text_hash, label, probs) VALUES (?, ?, ?, ?, ?, ?)",
            [(task, teacher, i, _text_hash(t), int(y), p) for i, t, y, p in zip(ids, texts, labels, soft, strict=True)],
        )
        self._db.commit()

    def count(self, task: str, teacher: str | None = None) -> int:
        """Labels cached for ``task`` (by ``teacher``, or by any)."""
        query, args = "SELECT COUNT(*) FROM labels WHERE task = ?", [task]
        if teacher is not None:
            query, args = query + " AND teacher = ?", [task, teacher]
        return self._db.execute(query, args).fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- teachers


class ColumnTeacher:
    """Labels the user already holds, in a column of the table: label indices or label names."""

    def __init__(self, table: Table, column: str, labels: Sequence[str]) -> None:
        if column not in table.frame.column_names:
            raise ConfigError(f"table {table.path}: no label column {column!r} (columns: {table.frame.column_names})")
        self.name = COLUMN_PREFIX + column
        self.labels = tuple(labels)
        self._values = table.frame.column(column).to_pylist()

    def label(self, positions: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.labels)}
        out, bad = [], []
        for pos in positions:
            value = self._values[int(pos)]
            if isinstance(value, str) and value in index:
                out.append(index[value])
            elif isinstance(value, str) and value.strip().isdigit() and int(value) < len(self.labels):
                out.append(int(value))
            elif isinstance(value, int | np.integer) and 0 <= int(value) < len(self.labels):
                out.append(int(value))
            else:
                bad.append(value)
                out.append(-1)
        if bad:
            raise ConfigError(
                f"{self.name}: {len(bad)} value(s) outside the task's labels {list(self.labels)} "
                f"(or indices 0-{len(self.labels) - 1}), e.g. {bad[:3]}"
            )
        return np.array(out, dtype=np.int64)


class ServerTeacher:
    """The large LLM tier through a running server: the task's prompt, argmax over its verbalizations."""

    def __init__(self, client, prompt: dict, model: str = TEACHER_LLM) -> None:
        from cascade.gate import prompt_template

        self.client = client
        self.model = model
        self.template = prompt_template(prompt)
        self.calibrate = prompt.get("calibrate")
        digest = hashlib.sha1(repr(sorted(prompt.items())).encode()).hexdigest()[:12]
        # Another prompt, or another model behind the tier, is another teacher: its labels are cached apart.
        served = client.model_parameters(model).get(contract.CFG_LLM_MODEL, "unknown")
        self.name = f"{model}:{served}:{digest}"

    def label(self, positions: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """The teacher's probabilities ``[n, k]`` (its label is the argmax; the probabilities are its soft labels).
        One request per model instance (``contract.LLM_INSTANCES``), in flight together: a labelling job uses
        every core the scorers were sized for."""
        from concurrent.futures import ThreadPoolExecutor

        prompts = [self.template.format(t) for t in texts]
        parts = [p for p in np.array_split(np.arange(len(prompts)), contract.LLM_INSTANCES) if p.size]

        def score(idx: np.ndarray) -> np.ndarray:
            chunk = [prompts[i] for i in idx]
            return self.client.score(self.model, chunk, self.template.verbalizations, self.calibrate)[0]

        with ThreadPoolExecutor(len(parts)) as pool:
            return np.concatenate(list(pool.map(score, parts))).astype(np.float32)


def connect(url: str, timeout_s: float = 600.0):
    """A client of a ready server, or a :class:`ServerError` that names the URL."""
    from cascade.client import CascadeClient

    client = CascadeClient(url, timeout_s=timeout_s)
    if not client.is_ready():
        client.close()
        raise ServerError(f"no ready Triton server at {url}: start one with `cascade serve` or pass --url")
    return client


# --------------------------------------------------------------------------------------------- labelling


@dataclass
class Labelled:
    """The teacher-labelled sample."""

    ids: list[str]
    texts: list[str]
    labels: np.ndarray
    teacher: str
    cached_rows: int  # rows that came from the cache (a resumed run)
    teacher_s: float  # seconds spent waiting for the teacher in this run
    #: Per row, the sample it came from: UNIFORM or ACTIVE (empty: all uniform).
    kinds: list[str] = field(default_factory=list)
    #: The teacher's probabilities [n, k] (soft labels); NaN rows where the teacher gives none (a column teacher,
    #: a cache from before they were kept); None when no row has them.
    probs: np.ndarray | None = None

    def label_counts(self, n_labels: int) -> list[int]:
        return np.bincount(self.labels, minlength=n_labels).tolist()


def label_sample(
    task: str,
    labels: Sequence[str],
    table: Table,
    positions: np.ndarray,
    teacher,
    store: LabelStore,
    batch: int = LABEL_BATCH,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
    desc: str = "labelling",
    two_classes: bool = True,
) -> Labelled:
    """Label the rows at ``positions``: cached ones from ``store``, the rest from ``teacher`` in batches,
    each batch committed before the next (an interrupted run loses at most one batch). ``teacher.label`` gives
    label indices ``[n]`` or probabilities ``[n, k]`` (kept as soft labels). ``two_classes``: a sample of one
    label is a :class:`SingleClassError` (off for the active rows, which add to a seed)."""
    from cascade.progress import progress as progress_bar

    ids = [table.ids[i] for i in positions]
    texts = [table.texts[i] for i in positions]
    cached = store.get(task, teacher.name, ids, texts)
    todo = [k for k, row_id in enumerate(ids) if row_id not in cached]
    found = {row_id: label for row_id, label in cached.items()}
    soft = store.get_probs(task, teacher.name, ids, texts)
    spent = 0.0
    bar = progress_bar(len(ids), f"{desc} ({teacher.name})", "row", initial=len(ids) - len(todo), disable=not progress)
    try:
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            t = time.perf_counter()
            try:
                got = teacher.label(positions[chunk], [texts[k] for k in chunk])
            except ServerError as exc:  # the server went away: say what is kept and how to go on
                raise type(exc)(
                    f"{exc}. {len(found)} of {len(ids)} labels are kept in {store.path}: "
                    "rerun the same command to resume"
                ) from exc
            spent += time.perf_counter() - t
            probs = None
            if got.ndim == 2:  # probabilities: the label is their argmax
                if got.shape[1] != len(labels):
                    raise ConfigError(
                        f"teacher {teacher.name} answered {got.shape[1]} probabilities, not {len(labels)}"
                    )
                probs, got = got, got.argmax(axis=1).astype(np.int64)
                soft.update({ids[k]: p.tolist() for k, p in zip(chunk, probs, strict=True)})
            if got.min(initial=0) < 0 or got.max(initial=0) >= len(labels):
                raise ConfigError(f"teacher {teacher.name} answered labels outside 0-{len(labels) - 1}")
            store.put(task, teacher.name, [ids[k] for k in chunk], [texts[k] for k in chunk], got, probs)
            found.update({ids[k]: int(y) for k, y in zip(chunk, got, strict=True)})
            bar.update(len(chunk))
            if on_batch is not None:
                on_batch(start + len(chunk))
    finally:
        bar.close()
    result = np.array([found[row_id] for row_id in ids], dtype=np.int64)
    present = np.flatnonzero(np.bincount(result, minlength=len(labels)))
    if two_classes and present.size < 2:
        only = labels[int(present[0])] if present.size else "?"
        raise SingleClassError(
            f"task {task}: the teacher labelled all {len(ids)} sampled rows {only!r}, so the cheap tiers have "
            "nothing to learn (extreme selectivity); keep this task on the LLM, or sample more rows"
        )
    probs = None
    if soft:
        probs = np.array([soft.get(row_id, [np.nan] * len(labels)) for row_id in ids], dtype=np.float32)
    return Labelled(ids, texts, result, teacher.name, len(ids) - len(todo), spent, probs=probs)


def active_sizes(budget: int) -> tuple[int, int]:
    """``(uniform seed rows, active rows)`` of an active budget: half each, with a seed of at least
    ACTIVE_MIN_SEED rows (a smaller budget is all seed: too few labels to tell which rows are hard)."""
    n_seed = min(budget, max(ACTIVE_MIN_SEED, budget - budget // 2))
    return n_seed, budget - n_seed


def least_confident(seed_emb: np.ndarray, seed_labels: np.ndarray, pool_emb: np.ndarray, n: int):
    """``(picked, top)``: the pool positions (sorted) of the ``n`` rows that a logistic regression fitted as
    tier 0 on the seed is least sure of, and every pool row's top probability. The lowest top probability is
    what tier 0's threshold escalates; for two labels it orders rows as the margin does."""
    from cascade.export.tabular import train_logreg

    _, y = np.unique(seed_labels, return_inverse=True)  # train_logreg wants labels 0..k-1, all present
    top = train_logreg(seed_emb, y).predict_proba(pool_emb).max(axis=1)
    # Rounded, ties broken by pool order: a rerun picks the same rows whatever the embeddings' last bits.
    order = np.lexsort((np.arange(len(top)), np.round(top, 6)))
    return np.sort(order[:n]), top


def label_active(
    task: str,
    labels: Sequence[str],
    table: Table,
    teacher,
    store: LabelStore,
    budget: int,
    seed: int,
    embed_rows: Callable[[list[str]], np.ndarray],
    progress: bool = True,
    batch: int = LABEL_BATCH,
) -> tuple[Labelled, dict]:
    """Active sampling: ``budget`` rows in all. A uniform seed (:func:`active_sizes`) is labelled first; a
    uniform pool of the other rows (at most ACTIVE_POOL_FACTOR x the active rows, to bound the embedding
    cost) is embedded with the seed by ``embed_rows``, and the rest of the budget goes to the pool rows that a
    tier-0 logistic regression fitted on the seed is least sure of (:func:`least_confident`). Everything
    follows from ``seed`` and the cached seed labels, so a rerun picks the same rows (and finds them cached)."""
    if budget > len(table):
        raise ConfigError(f"the table has {len(table)} rows, fewer than the budget {budget}")
    n_seed, n_active = active_sizes(budget)
    seed_pos = sample_rows(len(table), n_seed, seed)
    first = label_sample(task, labels, table, seed_pos, teacher, store, batch, progress, desc="uniform seed")
    info = {"seed_rows": n_seed, "active_rows": n_active, "pool_rows": 0}
    if n_active == 0:
        first.kinds = [UNIFORM] * n_seed
        return first, info
    rest = np.setdiff1d(np.arange(len(table)), seed_pos)
    n_pool = min(rest.size, ACTIVE_POOL_FACTOR * n_active)
    pool = np.sort(np.random.default_rng([seed, 1]).choice(rest, size=n_pool, replace=False))
    if progress:
        print(f"[label] embedding {n_seed} seed + {n_pool} pool rows to pick {n_active} active rows", flush=True)
    t = time.perf_counter()
    emb = np.asarray(embed_rows(first.texts + [table.texts[i] for i in pool]), dtype=np.float32)
    embed_s = time.perf_counter() - t
    picked, top = least_confident(emb[:n_seed], first.labels, emb[n_seed:], n_active)
    second = label_sample(
        task, labels, table, pool[picked], teacher, store, batch, progress, desc="active rows", two_classes=False
    )
    done = Labelled(
        first.ids + second.ids,
        first.texts + second.texts,
        np.concatenate([first.labels, second.labels]),
        teacher.name,
        first.cached_rows + second.cached_rows,
        first.teacher_s + second.teacher_s,
        [UNIFORM] * n_seed + [ACTIVE] * n_active,
        _stack_probs(first, second, len(labels)),
    )
    info |= {
        "pool_rows": n_pool,
        "embed_s": embed_s,
        "pool_mean_top_prob": float(top.mean()),
        "active_mean_top_prob": float(top[picked].mean()),
    }
    return done, info


def _stack_probs(first: Labelled, second: Labelled, k: int) -> np.ndarray | None:
    if first.probs is None and second.probs is None:
        return None
    parts = [x.probs if x.probs is not None else np.full((len(x.ids), k), np.nan, np.float32) for x in (first, second)]
    return np.concatenate(parts)


# --------------------------------------------------------------------------------------------- the verb


def work_dir_of(task: str, root: str | Path) -> Path:
    """Where a task's distillation files live: the label cache, the labelled sample, the teacher prompt."""
    return Path(root) / task


def teacher_prompt(task, data_dir: str | Path | None = None, seed: int = 0) -> dict:
    """The large tier's prompt for ``task``; its few-shot examples come from the task's dataset (labelled
    rows the user holds), so a task without a dataset must use a zero-shot teacher prompt."""
    from cascade.export.build import draw_few_shot
    from cascade.tasks import load_split

    prompt = task.llm.get(contract.TIER_LLM_LARGE)
    if prompt is None:
        raise ConfigError(f"task {task.name}: the LLM teacher needs an [llm] prompt (template, verbalizations)")
    examples = []
    if prompt.few_shot:
        if task.dataset is None:
            raise ConfigError(
                f"task {task.name}: few_shot = {prompt.few_shot} needs labelled rows (a [dataset]); set few_shot = 0"
            )
        texts, labels = load_split(task, "train", data_dir)
        examples = draw_few_shot(texts, np.array(labels), prompt.few_shot, task.n_labels, np.random.default_rng(seed))
    return prompt.gate_prompt(examples)


def run_label(
    task,
    work_root: str | Path,
    table_path: str | Path | None = None,
    *,
    text_column: str | None = None,
    id_column: str | None = None,
    budget: int | None = None,
    seed: int = 0,
    teacher: str = TEACHER_LLM,
    url: str | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    strategy: str = UNIFORM,
    repo: str | Path | None = None,
    sample: int | None = None,
) -> dict:
    """``cascade label``: sample ``budget`` rows of the table (``strategy`` uniform, or active: see
    :func:`label_active`, which embeds rows with the embedder of the model repository ``repo``), label them
    with the teacher (cached, resumable), write ``labelled.csv`` (id, text, label, sample: uniform/active)
    and ``labels.json`` (the summary) into the task's work folder. ``sample`` is the former name of ``budget``."""
    import json

    import pandas as pd

    from cascade.results import now_iso

    if budget is not None and sample is not None and budget != sample:
        raise InvalidInput(f"budget {budget} and sample {sample} are one setting: give one")
    budget = budget if budget is not None else sample if sample is not None else DEFAULT_BUDGET
    if strategy not in STRATEGIES:
        raise InvalidInput(f"unknown sampling strategy {strategy!r}: use {' or '.join(STRATEGIES)}")
    if strategy == ACTIVE and repo is None:
        raise ConfigError("active sampling embeds rows with the repository's embedder: give the model repository")
    if table_path is None:
        if task.dataset is None:
            raise ConfigError(f"task {task.name} has no [dataset]: give --table")
        table_path = task.dataset.path("train", data_dir)
    column = text_column or (task.dataset.text_column if task.dataset else "text")
    table = read_table(table_path, column, id_column)
    if table.skipped_rows:  # never sent to the teacher: said here, counted in the summary
        reasons = ", ".join(f"{n} {why.removeprefix('text is ')}" for why, n in table.skipped.items())
        if budget > len(table):
            raise ConfigError(
                f"table {table.path}: {len(table)} rows have text in column {column!r} ({table.skipped_rows} "
                f"skipped: {reasons}), fewer than the budget {budget}"
            )
        if progress:
            print(
                f"[label] {table.skipped_rows} row(s) of {table.path} have no text in column {column!r} ({reasons}): "
                "skipped, never sent to the teacher",
                flush=True,
            )
    positions = sample_rows(len(table), budget, seed)  # the uniform sample; checks the budget either way
    work = work_dir_of(task.name, work_root)
    work.mkdir(parents=True, exist_ok=True)
    client = None
    try:
        if teacher.startswith(COLUMN_PREFIX):
            source = ColumnTeacher(table, teacher[len(COLUMN_PREFIX) :], task.labels)
            prompt = None
        elif teacher == TEACHER_LLM:
            prompt = teacher_prompt(task, data_dir, seed)
            client = connect(url or f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}")
            source = ServerTeacher(client, prompt)
        else:
            raise InvalidInput(f"unknown teacher {teacher!r}: use {TEACHER_LLM} or {COLUMN_PREFIX}NAME")
        start = time.perf_counter()
        active = None  # active sampling's sizes and timings
        with LabelStore(work / "labels.sqlite") as store:
            if strategy == ACTIVE:

                def embed_rows(texts: list[str]) -> np.ndarray:
                    from cascade.export.build import embed, ensure_embedder

                    ensure_embedder(Path(repo))
                    return embed(Path(repo), texts)

                done, active = label_active(
                    task.name, task.labels, table, source, store, budget, seed, embed_rows, progress=progress
                )
            else:
                done = label_sample(task.name, task.labels, table, positions, source, store, progress=progress)
                done.kinds = [UNIFORM] * len(done.ids)
        wall = time.perf_counter() - start
    finally:
        if client is not None:
            client.close()
    frame = pd.DataFrame({"id": done.ids, "text": done.texts, "label": done.labels, SAMPLE_COLUMN: done.kinds})
    if done.probs is not None:  # the teacher's soft labels, one column per label (empty where it gave none)
        for j in range(task.n_labels):
            frame[f"{PROB_PREFIX}{j}"] = done.probs[:, j]
    tmp = work / "labelled.csv.tmp"
    frame.to_csv(tmp, index=False)
    tmp.replace(work / "labelled.csv")
    fresh = len(done.ids) - done.cached_rows
    summary = {
        "task": task.name,
        "table": str(table.path),
        "rows_in_table": len(table) + table.skipped_rows,
        "skipped_rows": table.skipped_rows,  # null or empty text: never sampled, never sent to the teacher
        "skipped": table.skipped,
        "sample": budget,  # rows labelled (the budget; the key predates it)
        "budget": budget,
        "strategy": strategy,
        "uniform_rows": done.kinds.count(UNIFORM),
        "active_rows": done.kinds.count(ACTIVE),
        "active": active,
        "seed": seed,
        "teacher": done.teacher,
        "teacher_prompt": prompt,
        "cached_rows": done.cached_rows,
        "labelled_rows": fresh,
        "teacher_s": done.teacher_s,
        "teacher_rows_per_s": fresh / done.teacher_s if done.teacher_s > 0 else None,
        "wall_s": wall,  # the whole labelling step: the teacher, the cache, active sampling's embedding
        "rows_per_s": len(done.ids) / wall if wall > 0 else None,  # of the sample, cached rows included
        "when": now_iso(),
        "label_counts": dict(zip(task.labels, done.label_counts(task.n_labels), strict=True)),
        "soft_label_rows": 0 if done.probs is None else int(np.isfinite(done.probs).all(axis=1).sum()),
    }
    (work / "labels.json").write_text(json.dumps(summary, indent=2))
    return summary


# --------------------------------------------------------------------------------------------- task create

CREATE_TIERS = ("logreg", "xgboost", "encoder", "llm_small", "llm_large")


def task_from_prompt(name: str, labels: Sequence[str], prompt: str, tiers: Sequence[str] = CREATE_TIERS):
    """A task from a question and its labels, in the prompt form measured best for the teacher
    (:func:`cascade.tasks.prompt_from_question`: the allowed answers named; the labels are the verbalizations)."""
    from cascade.tasks import LlmPrompt, TaskSpec, parse_tiers, prompt_from_question

    labels = tuple(label.strip() for label in labels)
    instruction, template = prompt_from_question(prompt, labels)
    llm = LlmPrompt(template=template, verbalizations=labels, instruction=instruction, calibrate=True)
    spec = TaskSpec(
        name=name,
        labels=labels,
        tiers=parse_tiers(list(tiers)),
        description=prompt.strip(),
        llm={t: llm for t in contract.LLM_TIERS},
    )
    toml = "\n".join(
        [
            "# Written by `cascade task create`.",
            f"name = {json_str(name)}",
            f"description = {json_str(spec.description)}",
            f"labels = [{', '.join(json_str(x) for x in labels)}]",
            f"tiers = [{', '.join(json_str(contract.TIER_NAMES[t]) for t in spec.tiers)}]",
            "",
            "[llm]",
            f"instruction = {json_str(instruction)}",
            f"template = {json_str(template)}",
            f"verbalizations = [{', '.join(json_str(x) for x in labels)}]",
            "few_shot = 0",
            "calibrate = true",
            "",
        ]
    )
    return spec, toml


def json_str(value: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML escapes)."""
    import json

    return json.dumps(value, ensure_ascii=False)


def teach_and_load(task, repo: str | Path, work_root: str | Path, client, options) -> tuple[dict, list[str], float]:
    """train -> calibrate -> export -> load from the task's ``labelled.csv`` (``options.labels_file`` is set
    here): the report, the models loaded and the seconds it took (the teacher's labelling is not in them)."""
    from dataclasses import replace

    from cascade.export.build import calibrate_task, export_task, train_task

    start = time.perf_counter()
    work = work_dir_of(task.name, work_root)
    stage = work / "stage"
    train_task(task, repo, stage, replace(options, labels_file=str(work / "labelled.csv")))
    report = calibrate_task(task, repo, stage)
    names = export_task(task, repo, stage)
    client.load_models(names)
    return report, names, time.perf_counter() - start


def create_task(
    name: str,
    table_path: str | Path,
    prompt: str,
    labels: Sequence[str],
    *,
    repo: str | Path,
    work_root: str | Path,
    url: str,
    text_column: str = "text",
    id_column: str | None = None,
    budget: int | None = None,
    seed: int = 0,
    tiers: Sequence[str] = CREATE_TIERS,
    target: float = 0.9,
    delta: float = 0.05,
    encoder_epochs: int = 2,
    progress: bool = True,
    strategy: str = UNIFORM,
    sample: int | None = None,
) -> dict:
    """``cascade task create``: label -> train -> calibrate -> export -> load into a running server
    (``--model-control-mode=explicit``) without a restart. The teacher's time is reported apart.
    ``budget`` and ``strategy`` as in :func:`run_label` (active sampling embeds with ``repo``'s embedder)."""
    from cascade.export.build import BuildOptions
    from cascade.tasks import load_task

    repo = Path(repo)
    if (repo / name).exists():
        raise ConfigError(f"{repo / name} exists: task {name!r} is already in the repository (pick another name)")
    _, toml = task_from_prompt(name, labels, prompt, tiers)
    work = work_dir_of(name, work_root)
    work.mkdir(parents=True, exist_ok=True)
    task_file = work / "task.toml"
    task_file.write_text(toml + f"\n[calibration]\ntarget = {target}\ndelta = {delta}\n")
    task = load_task(task_file)  # what the later verbs will load: the same digest
    client = connect(url)
    try:
        labelled = run_label(
            task,
            work_root,
            table_path,
            text_column=text_column,
            id_column=id_column,
            budget=budget,
            sample=sample,
            seed=seed,
            url=url,
            progress=progress,
            strategy=strategy,
            repo=repo,
        )
        options = BuildOptions(encoder_epochs=encoder_epochs, seed=seed, progress=progress)
        report, names, pipeline_s = teach_and_load(task, repo, work_root, client, options)
    finally:
        client.close()
    return {
        "task": name,
        "task_file": str(task_file),
        "models": names,
        "labels": labelled,
        "calibration": report["calibration"],
        "gate": report["gate"],
        "teacher_labelling_s": labelled["teacher_s"],
        "label_step_s": labelled["wall_s"],
        "train_calibrate_export_load_s": pipeline_s,
    }
