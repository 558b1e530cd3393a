"""Build a task into a model repository: embed, train tiers 0-2, calibrate thresholds, export.

Until the distillation issue lands, the tiers learn from the dataset's gold labels and the
thresholds are calibrated on held-out gold labels (provisional: the teacher will replace gold).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cascade import configgen, contract, embedders
from cascade.calibrate import (
    calibrate_cascade,
    calibrate_for_budget,
    default_costs,
    expected_cost,
    plot_calibration,
    tier_mix,
)
from cascade.errors import ConfigError
from cascade.export.labelled import ACTIVE, PROB_PREFIX, SAMPLE_COLUMN, UNIFORM
from cascade.export.repository import RepositoryWriter
from cascade.gate import GateConfig
from cascade.tasks import TaskSpec, load_split
from cascade.trtllm_config import cpu_generate_spec

EMBEDDER_FILES = ("model.onnx", "tokenizer.json")


@dataclass(frozen=True)
class BuildOptions:
    train_rows: int = 2000
    calib_rows: int = 1000
    encoder_epochs: int = 2
    seed: int = 0
    data_dir: str | None = None
    min_coverage: float = 0.02
    #: Keep tiers that miss the calibration target, with threshold 1.0 (they escalate all but certain
    #: rows). For tests and debugging: the default disables them, the quality gate of the paper.
    keep_all_tiers: bool = False
    progress: bool = True
    #: The repository's embedder for a new repository (cascade.embedders); None: the repository's, or the default.
    embedder: str | None = None
    #: Teacher labels to learn from (``cascade label``'s ``labelled.csv``); None: the dataset's gold labels.
    labels_file: str | None = None
    #: With ``labels_file``: learn from the teacher's probabilities (its soft labels) where the file has them, not
    #: only its argmax. On by default: it measured better (docs/embedders.md, "Soft labels").
    soft_labels: bool = True
    #: With ``labels_file``: the share of the labelled rows held out for calibration, drawn from the uniform
    #: rows only (at most all of them; active sampling's rows always train).
    calib_fraction: float = 0.5


def read_labelled(path: str | Path, task: TaskSpec) -> tuple[list[str], np.ndarray, dict]:
    """``labelled.csv`` (id, text, label) and the ``labels.json`` summary written beside it."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"labels file {path} not found: run `cascade label` first")
    frame = pd.read_csv(path, keep_default_na=False)
    if not {"text", "label"} <= set(frame.columns):
        raise ConfigError(f"{path}: needs columns text and label (columns: {list(frame.columns)})")
    labels = frame["label"].to_numpy()
    if len(frame) == 0 or labels.min() < 0 or labels.max() >= task.n_labels:
        raise ConfigError(f"{path}: labels must be indices 0-{task.n_labels - 1} of task {task.name}")
    summary_path = path.with_name("labels.json")
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if summary.get("task", task.name) != task.name:
        raise ConfigError(f"{path} holds labels of task {summary['task']!r}, not {task.name!r}")
    return frame["text"].astype(str).tolist(), labels.astype(np.int64), summary


def read_soft_labels(path: str | Path, labels: np.ndarray, n_labels: int) -> np.ndarray | None:
    """The teacher's probabilities in ``labelled.csv`` (``prob_<j>`` columns), [n, n_labels]; a row without them
    (a column teacher, an older cache) gets its hard label as a one-hot row. None when the file has none."""
    import pandas as pd

    columns = [f"{PROB_PREFIX}{j}" for j in range(n_labels)]
    frame = pd.read_csv(path)
    if not set(columns) <= set(frame.columns):
        return None
    probs = frame[columns].to_numpy(dtype=np.float32)
    missing = ~np.isfinite(probs).all(axis=1)
    probs[missing] = np.eye(n_labels, dtype=np.float32)[labels[missing]]
    return probs


def uniform_rows(path: str | Path) -> np.ndarray:
    """Which rows of ``labelled.csv`` came from its uniform sample (``sample`` column; a file without it
    predates active sampling: all uniform). Only these may calibrate (README, "cascade label")."""
    import pandas as pd

    frame = pd.read_csv(path, keep_default_na=False)
    if SAMPLE_COLUMN not in frame.columns:
        return np.ones(len(frame), dtype=bool)
    kinds = frame[SAMPLE_COLUMN].astype(str)
    if not kinds.isin([UNIFORM, ACTIVE]).all():
        raise ConfigError(f"{path}: column {SAMPLE_COLUMN!r} must hold {UNIFORM!r} or {ACTIVE!r}")
    return (kinds == UNIFORM).to_numpy()


def log(message: str) -> None:
    print(f"[build] {message}", flush=True)


def embedder_dir(repo: Path) -> Path:
    return Path(repo) / contract.EMBEDDER_MODEL / "1"


def ensure_embedder(repo: Path, name: str | None = None, force: bool = False) -> Path:
    """The repository's embedder, exported to ONNX once and shared by every task (``name``, default
    :data:`cascade.embedders.DEFAULT_EMBEDDER` for a new repository). Asking for another embedder than the one a
    repository holds is a :class:`ConfigError`: its tasks' models were trained on that one's vectors."""
    from cascade.export.embedder import export_embedder

    target = embedder_dir(repo)
    existing = embedders.of_repository(repo) if all((target / f).is_file() for f in EMBEDDER_FILES) else None
    if existing is not None and name not in (None, existing.name):
        raise ConfigError(
            f"{repo} is built with embedder {existing.name!r}, and every task in a repository shares it: "
            f"build with --embedder {existing.name}, or build the {name!r} tasks into another repository"
        )
    if existing is not None and not force:
        return target
    chosen = embedders.get(name or (existing.name if existing else embedders.DEFAULT_EMBEDDER))
    start = time.perf_counter()
    with RepositoryWriter(repo) as writer:
        spec = configgen.embedder_spec(embedding_dim=chosen.dim, embedder=chosen.name)
        export_embedder(writer.add(spec), chosen.name)
    log(f"exported the embedder {chosen.name} ({chosen.dim}-d) to ONNX in {time.perf_counter() - start:.1f} s")
    return target


def repository_embedder(repo: Path) -> embedders.Embedder:
    found = embedders.of_repository(repo)
    if found is None:
        raise ConfigError(f"{repo} has no embedder yet: build a task into it first")
    return found


def embed(repo: Path, texts: list[str]) -> np.ndarray:
    from cascade.runtime import OnnxRunner

    return OnnxRunner(embedder_dir(repo), num_threads=2).run(texts)


#: Which packaged GGUF serves each LLM tier on CPU (chosen by measurement: docs/llm.md, "Roles").
LLM_ROLES = {contract.TIER_LLM_SMALL: "smollm2-135m:f16", contract.TIER_LLM_LARGE: "qwen2.5-coder-1.5b"}
LLM_N_CTX = 1024


def llm_specs() -> list[configgen.ModelSpec]:
    """The LLM tiers' scorers and ``llm_generate``, the streaming text endpoint (on the small tier's model)."""
    # Contextual calibration on by default; a task prompt's ``calibrate`` overrides it per request.
    scorers = [configgen.llm_spec(t, LLM_ROLES[t], n_ctx=LLM_N_CTX, calibrate=True) for t in LLM_ROLES]
    return [*scorers, cpu_generate_spec(LLM_ROLES[contract.TIER_LLM_SMALL], n_ctx=LLM_N_CTX)]


def ensure_llms(repo: Path) -> None:
    """Write the shared LLM models (scorers and ``llm_generate``: one copy whatever the number of tasks) where
    missing or stale."""
    stale = []
    for spec in llm_specs():
        config = Path(repo) / spec.name / "config.pbtxt"
        if not config.is_file() or config.read_text() != spec.to_pbtxt():
            stale.append(spec)
    if stale:
        with RepositoryWriter(repo) as writer:
            for spec in stale:
                writer.add(spec)


def llm_scorer_on(tier: int, gate_prompt: dict, texts: list[str], timings: dict[str, float] | None = None):
    """Probabilities of an LLM tier on the rows ``idx`` of ``texts``, computed only when asked (the seconds
    it scored go to ``timings["score_<tier name>_s"]``)."""
    from cascade.gate import prompt_template
    from cascade.gguf import gguf_path
    from cascade.llm import LlamaScorer

    template = prompt_template(gate_prompt)
    calibrate = gate_prompt.get("calibrate")
    scorer = None

    def score(idx: np.ndarray) -> np.ndarray:
        nonlocal scorer
        if idx.size == 0:
            return np.zeros((0, len(template.verbalizations)), np.float32)
        if scorer is None:
            scorer = LlamaScorer(gguf_path(LLM_ROLES[tier]), n_ctx=LLM_N_CTX)
        start = time.perf_counter()
        probs = scorer.score([template.format(texts[i]) for i in idx], template.verbalizations, calibrate).probs
        seconds = time.perf_counter() - start
        if timings is not None:
            key = f"score_{contract.TIER_NAMES[tier]}_s"
            timings[key] = timings.get(key, 0.0) + seconds
        log(f"tier {tier} ({contract.TIER_NAMES[tier]}): scored {idx.size} rows in {seconds:.1f} s")
        return probs

    return score


#: Few-shot examples are drawn among training rows of this many words where enough exist: very short rows
#: ("a bore") teach little and long ones lengthen every prompt (cascade.bench_llm draws the same way).
FEW_SHOT_WORDS = (8, 40)


def draw_few_shot(texts: list[str], labels: np.ndarray, k: int, n_labels: int, rng) -> list[tuple[str, int]]:
    """``k`` labelled examples, as balanced over the labels as ``k`` allows, in a shuffled order."""
    if k <= 0:
        return []
    lo, hi = FEW_SHOT_WORDS
    words = np.array([len(t.split()) for t in texts])
    picked = []
    for label in range(n_labels):
        take = k // n_labels + (1 if label < k % n_labels else 0)
        idx = np.flatnonzero(labels == label)
        moderate = idx[(words[idx] >= lo) & (words[idx] <= hi)]
        pool = moderate if moderate.size >= take else idx
        picked += [(texts[i], label) for i in rng.choice(pool, size=min(take, pool.size), replace=False)]
    order = rng.permutation(len(picked))
    return [picked[i] for i in order]


#: Training rows the int8 encoder is compared on against fp32 (export.encoder.quantize_if_cheap).
ENCODER_INT8_CHECK_ROWS = 500
STATE_FILE = "state.json"
CALIB_FILE = "calib.npz"
MODELS_DIR = "models"


def train_task(task: TaskSpec, repo: Path, stage: Path, opts: BuildOptions = BuildOptions()) -> dict:
    """``cascade train``: learn tiers 0-2 from the reference labels (gold, or the teacher's with
    ``opts.labels_file``) into ``stage/models`` (a model repository of the task's models), keep their
    probabilities on the held-out calibration rows in ``stage/calib.npz`` and fix the LLM tiers' prompts."""
    from cascade.export import encoder as enc
    from cascade.export import tabular
    from cascade.runtime import OnnxRunner

    repo, stage = Path(repo), Path(stage)
    shutil.rmtree(stage / MODELS_DIR, ignore_errors=True)
    (stage / MODELS_DIR).mkdir(parents=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ensure_embedder(repo, opts.embedder)
    embedding_dim = repository_embedder(repo).dim
    timings["embedder_export_s"] = time.perf_counter() - t0

    rng = np.random.default_rng(opts.seed)
    teacher_prompt = None
    soft = None
    if opts.labels_file:
        texts, labels, summary = read_labelled(opts.labels_file, task)
        if opts.soft_labels:
            soft = read_soft_labels(opts.labels_file, labels, task.n_labels)
            if soft is None:
                log("soft labels asked for, but the labels file has no teacher probabilities: hard labels")
        reference = f"teacher labels ({summary.get('teacher', 'unknown teacher')}) from {opts.labels_file}"
        if str(summary.get("teacher", "")).startswith(contract.TIER_NAMES[contract.TIER_LLM_LARGE]):
            teacher_prompt = summary.get("teacher_prompt")  # the large tier keeps the prompt that taught
        order = rng.permutation(len(texts))
        uniform = uniform_rows(opts.labels_file)  # calibration draws from these only; active rows all train
        n_calib = min(round(len(texts) * opts.calib_fraction), int(uniform.sum()))
        if n_calib < 50 or len(texts) - n_calib < 50:
            raise ConfigError(f"{len(texts)} labelled rows are too few: need >= 50 to train and >= 50 to calibrate")
        calib_idx = order[uniform[order]][:n_calib]  # all uniform: order[:n_calib], as before active sampling
        train_idx = order[~np.isin(order, calib_idx)]
        if not uniform.all():
            log(f"calibrating on {n_calib} of {uniform.sum()} uniform rows; the {(~uniform).sum()} active rows train")
    else:
        texts, labels = load_split(task, "train", opts.data_dir)
        reference = "gold labels of the dataset"
        order = rng.permutation(len(texts))
        need = opts.train_rows + opts.calib_rows
        if len(order) < need:
            raise ConfigError(f"task {task.name}: {len(order)} training rows, need {need}")
        train_idx, calib_idx = order[: opts.train_rows], order[opts.train_rows : need]
    x_texts = [texts[i] for i in train_idx]
    y = np.array([labels[i] for i in train_idx])
    c_texts = [texts[i] for i in calib_idx]
    c_y = np.array([labels[i] for i in calib_idx])
    x_soft = soft[train_idx] if soft is not None else None  # calibration always compares hard labels

    t = time.perf_counter()
    emb = embed(repo, x_texts + c_texts)
    x_emb, c_emb = emb[: len(x_texts)], emb[len(x_texts) :]
    timings["embed_s"] = time.perf_counter() - t
    log(f"embedded {len(emb)} rows in {timings['embed_s']:.1f} s")

    calib_probs: dict[int, np.ndarray] = {}
    with RepositoryWriter(stage / MODELS_DIR) as writer:
        for tier in task.tiers:
            if tier not in contract.PER_TASK_TIERS:
                continue
            spec = configgen.tier_spec(task.name, tier, task.n_labels, embedding_dim=embedding_dim)
            t = time.perf_counter()
            if tier == contract.TIER_LOGREG:
                model = tabular.train_logreg(x_emb, y, probs=x_soft)
                tabular.export_logreg(model, writer.add(spec) / "model.onnx")
                calib_probs[tier] = model.predict_proba(c_emb)
            elif tier == contract.TIER_XGBOOST:
                model = tabular.train_xgboost(x_emb, y, seed=opts.seed, probs=x_soft)
                tabular.export_xgboost(model, writer.add(spec) / "model.onnx")
                calib_probs[tier] = model.predict_proba(c_emb)
            else:
                model = enc.train_encoder(
                    x_texts,
                    y.tolist(),
                    task.n_labels,
                    epochs=opts.encoder_epochs,
                    seed=opts.seed,
                    progress=opts.progress,
                    backbone=repository_embedder(repo).name,  # the encoder starts from the embedder's backbone
                    soft_labels=x_soft,
                )
                version = writer.add(spec)
                enc.export_encoder(model, version)
                check = np.random.default_rng(opts.seed).permutation(len(x_texts))[:ENCODER_INT8_CHECK_ROWS]
                int8 = enc.quantize_if_cheap(version, [x_texts[i] for i in check], y[check])
                log(
                    f"encoder {'int8' if int8['int8'] else 'fp32'}: agreement {int8['int8_agreement']:.3f} int8 vs "
                    f"{int8['fp32_agreement']:.3f} fp32 on {int8['rows']} training rows"
                )
                timings["encoder_int8"] = float(int8["int8"])
                calib_probs[tier] = OnnxRunner(version, num_threads=2).run(c_texts)
            name = contract.TIER_NAMES[tier]
            timings[f"train_{name}_s"] = time.perf_counter() - t
            acc = float((calib_probs[tier].argmax(1) == c_y).mean())
            log(f"tier {tier} ({name}): trained in {timings[f'train_{name}_s']:.1f} s, held-out agreement {acc:.3f}")

    prompts = {}
    for tier in (t for t in task.tiers if t in contract.LLM_TIERS):
        if tier == contract.TIER_LLM_LARGE and teacher_prompt is not None:
            prompts[tier] = teacher_prompt
        else:  # few-shot examples from the reference labels of the training rows
            examples = draw_few_shot(x_texts, y, task.llm[tier].few_shot, task.n_labels, rng)
            prompts[tier] = task.llm[tier].gate_prompt(examples)
    np.savez(
        stage / CALIB_FILE,
        texts=np.array(c_texts, dtype=object),
        labels=c_y,
        **{f"tier{t}": p for t, p in calib_probs.items()},
    )
    state = {
        "task": task.name,
        "task_digest": task.digest(),
        "labels": list(task.labels),
        "embedder": repository_embedder(repo).name,
        "reference": reference,
        "options": asdict(opts),
        "train_rows": len(x_texts),
        "calib_rows": len(c_texts),
        "prompts": {contract.TIER_NAMES[t]: p for t, p in prompts.items()},
        "timings": timings,
    }
    (stage / STATE_FILE).write_text(json.dumps(state, indent=2))
    return state


def _load_stage(task: TaskSpec, stage: Path, step: str) -> dict:
    path = Path(stage) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{stage}: nothing trained for task {task.name}; run `cascade train` before `{step}`")
    state = json.loads(path.read_text())
    if state.get("task_digest") != task.digest():
        raise ConfigError(f"{stage}: trained from another definition of task {task.name}; run `cascade train` again")
    return state


def stage_embedder(state: dict) -> embedders.Embedder:
    """The embedder the staged models were trained on (MiniLM for a stage from before it was recorded)."""
    return embedders.get(state.get("embedder", embedders.MINILM))


def calibrate_task(
    task: TaskSpec,
    repo: Path,
    stage: Path,
    target: float | None = None,
    delta: float | None = None,
    min_coverage: float = 0.02,
    keep_all_tiers: bool = False,
    budget_ms: float | None = None,
) -> dict:
    """``cascade calibrate``: thresholds on the held-out rows (the LLM tiers score only the rows that reach
    them), the gate model into ``stage/models``, ``calibration.json`` and ``calibration.png``."""
    stage = Path(stage)
    state = _load_stage(task, stage, "cascade calibrate")
    target = task.target if target is None else target
    delta = task.delta if delta is None else delta
    if not 0 < target <= 1 or not 0 < delta < 1:
        raise ConfigError(f"need 0 < target <= 1 and 0 < delta < 1, got target {target}, delta {delta}")
    saved = np.load(stage / CALIB_FILE, allow_pickle=True)
    c_texts, c_y = saved["texts"].tolist(), saved["labels"]
    calib_probs = {t: saved[f"tier{t}"] for t in task.tiers if f"tier{t}" in saved}
    prompts = {contract.TIER_BY_NAME[name]: p for name, p in state["prompts"].items()}
    t = time.perf_counter()
    scoring: dict[str, float] = {}  # the LLM tiers' seconds on the rows that reach them
    if prompts:
        ensure_llms(repo)
    for tier, prompt in prompts.items():
        calib_probs[tier] = llm_scorer_on(tier, prompt, c_texts, scoring)
    curves: dict[int, dict] = {}
    costs = default_costs(stage_embedder(state).ms_per_row)
    if budget_ms is not None:  # budget mode: the highest target whose expected cost fits
        target, calibration = calibrate_for_budget(
            calib_probs, c_y, budget_ms, delta, costs=costs, min_coverage=min_coverage, curves=curves
        )
        log(f"budget {budget_ms} ms/row: target {target} is the highest that fits")
    else:
        calibration = calibrate_cascade(
            calib_probs, c_y, target, delta, min_coverage, best_fallback=not keep_all_tiers, curves=curves
        )
    enabled = tuple(c.tier for c in calibration if c.enabled or keep_all_tiers)
    thresholds = {c.tier: (c.threshold if c.enabled else 1.0) for c in calibration if c.tier != enabled[-1]}
    thresholds = {t: v for t, v in thresholds.items() if t in enabled}
    gate = GateConfig(
        task=task.name,
        labels=task.labels,
        tiers=enabled,
        thresholds=thresholds,
        prompts={t: p for t, p in prompts.items() if t in enabled},
        inline_tiers=tuple(t for t in enabled if t in contract.EMBEDDING_TIERS),
    )
    timings = dict(state["timings"], calibrate_s=time.perf_counter() - t)
    timings.update(scoring)  # filled while calibrating (the scorers run lazily): part of calibrate_s
    reference = state["reference"]
    report = {k: state[k] for k in ("task", "task_digest", "labels", "reference", "options", "train_rows")} | {
        "calib_rows": state["calib_rows"],
        "target": target,
        "delta": delta,
        "budget_ms": budget_ms,
        "expected_cost_ms": expected_cost(calibration, costs),
        "calibration": [c.to_dict() for c in calibration],
        "gate": gate.to_parameters(),
        "timings": timings,
    }
    calibration_json = {
        "task": task.name,
        "reference": reference,
        "target": target,
        "delta": delta,
        "tiers": [c.to_dict() for c in calibration],
        "tier_mix": {contract.TIER_NAMES[t]: v for t, v in tier_mix(calibration).items()},
        "budget_ms": budget_ms,
        "expected_cost_ms": expected_cost(calibration, costs),
        "curves": {contract.TIER_NAMES[t]: curve for t, curve in curves.items()},
    }
    with RepositoryWriter(stage / MODELS_DIR) as writer:
        dim = stage_embedder(state).dim
        gate_dir = writer.add(configgen.gate_spec(gate.to_parameters(), task.name, task.n_labels, embedding_dim=dim))
        gate_dir = gate_dir.parent
        for folder in (gate_dir, stage):
            (folder / "build_report.json").write_text(json.dumps(report, indent=2))
            (folder / "calibration.json").write_text(json.dumps(calibration_json, indent=2))
        plot_calibration(
            calibration,
            curves,
            target,
            gate_dir / "calibration.png",
            title=f"{task.name}: calibration on {len(c_texts)} held-out rows ({reference.split(' (')[0]})",
        )
    shutil.copy2(stage / MODELS_DIR / task.name / "calibration.png", stage / "calibration.png")
    for c in calibration:
        name = f"tier {c.tier} ({contract.TIER_NAMES[c.tier]})"
        if c.enabled and c.threshold is None:
            seen = f": agreement {c.agreement:.3f}" if c.rows else ""
            log(f"{name} answers the {c.rows} rows that reach it{seen}" + (f"; {c.note}" if c.note else ""))
        elif not c.enabled and c.rows and c.note.startswith("disabled: "):  # the best it saw, and why
            log(
                f"{name} DISABLED: reaches {c.rows} rows, best agreement {c.agreement:.3f} "
                f"(lower bound {c.lower_bound:.3f}, target {target}): {c.note.removeprefix('disabled: ')}"
            )
        elif c.note:
            log(f"{name} DISABLED: {c.note.removeprefix('disabled: ')}")
        else:
            log(
                f"{name} {'enabled' if c.enabled else 'DISABLED'}: threshold {c.threshold or 0:.3f}, "
                f"reaches {c.rows} rows, accepts {c.coverage:.1%}, agreement {c.agreement:.3f} "
                f"(lower bound {c.lower_bound:.3f}, target {target})"
            )
    return report


def export_task(task: TaskSpec, repo: Path, stage: Path) -> list[str]:
    """``cascade export``: the staged task models and gate into ``repo`` in one atomic step (each model
    folder is renamed into place); the shared embedder and LLM scorers are written first if missing."""
    stage = Path(stage)
    state = _load_stage(task, stage, "cascade export")
    models = stage / MODELS_DIR
    if not (models / task.name / "config.pbtxt").is_file():
        raise ConfigError(f"{stage}: task {task.name} is not calibrated; run `cascade calibrate` before export")
    ensure_embedder(repo, stage_embedder(state).name)  # the embedder the task's models were trained on
    if any(t in contract.LLM_TIERS for t in task.tiers):
        ensure_llms(repo)
    names = [contract.tier_model_name(task.name, t) for t in task.tiers if t in contract.PER_TASK_TIERS]
    names.append(task.name)
    with RepositoryWriter(repo) as writer:
        for name in names:
            writer.add_dir(name, models / name)
    log(f"task {task.name} exported to {repo}: {', '.join(names)}")
    return names


def build_task(task: TaskSpec, repo: Path, opts: BuildOptions = BuildOptions()) -> dict:
    """train -> calibrate -> export in one go, staged in a temporary folder beside the repository."""
    import tempfile

    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=repo.parent, prefix=f".{task.name}.build-") as tmp:
        train_task(task, repo, Path(tmp), opts)
        report = calibrate_task(
            task, repo, Path(tmp), min_coverage=opts.min_coverage, keep_all_tiers=opts.keep_all_tiers
        )
        export_task(task, repo, Path(tmp))
    report["timings"]["total_s"] = time.perf_counter() - t0
    log(f"task {task.name} written to {repo} in {report['timings']['total_s']:.1f} s")
    return report


def build_figures(report: dict, repo: Path) -> dict:
    """What a build measured, from its report: the embedder, the rows used, the seconds of each stage
    (``timings``: embedder export, embedding, each tier's training, the LLM tiers' scoring, calibration, total)
    and per tier the calibration (threshold, coverage, agreement, lower bound, enabled, ``note``: why not)."""
    found = embedders.of_repository(repo)
    return {
        "embedder": found.name if found is not None else report["options"].get("embedder"),
        "reference": report["reference"],
        "train_rows": report["train_rows"],
        "calib_rows": report["calib_rows"],
        "target": report["target"],
        "delta": report["delta"],
        "expected_cost_ms": report["expected_cost_ms"],
        "timings": report["timings"],
        "tiers": [contract.TIER_NAMES[c["tier"]] for c in report["calibration"] if c["enabled"]],
        "calibration": [{"tier_name": contract.TIER_NAMES[c["tier"]], **c} for c in report["calibration"]],
    }


def build_result(task: TaskSpec, repo: Path, report: dict, command: str | None = None) -> dict:
    """``cascade build``'s ``bench/results/build-<task>-<time>.json``: :func:`build_figures` and the options."""
    from cascade.results import command_line, machine, now_iso

    return {
        "benchmark": "build",
        "when": now_iso(),
        "command": command or command_line(),
        "task": task.name,
        "task_digest": report["task_digest"],
        "repo": str(repo),
        **build_figures(report, Path(repo)),
        "options": report["options"],
        "machine": machine(),
    }
