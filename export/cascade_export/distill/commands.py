"""Distillation, step 1: a teacher labels a sample of the user's table (``cascade label``), and ``cascade task
create``'s label -> train -> calibrate -> export -> load.

The teacher is the large LLM tier through the running server (``llm_large``), or a column of labels the
user already holds (``column:NAME``: human or batch-LLM labels; gold labels as a control): see
:mod:`~cascade_export.distill.teachers`. Labels are cached in SQLite
(:mod:`~cascade_export.distill.label_store`), committed after every batch, so an interrupted run resumes where it
stopped and an edited row is labelled again.

The sample is uniform (``strategy="uniform"``), or ``"active"``: a uniform seed, then the rows that a
logistic regression (tier 0) trained on the seed is least sure of (:mod:`cascade_export.distill.active`). Every labelled
row records which sample it came from (``labelled.csv``'s ``sample`` column): calibration uses the
uniform rows only, the i.i.d. sample its guarantee needs.
No Triton import here beyond the gRPC client.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cascade import contract
from cascade.errors import ConfigError, InvalidInput
from cascade_export.build.labelled import ACTIVE, PROB_PREFIX, SAMPLE_COLUMN, UNIFORM
from cascade_export.distill.active import label_active
from cascade_export.distill.examples import (
    BOTH,
    embed_served,
    examples_alone,
    gold_report,
    label_warnings,
    read_examples,
    weigh_examples,
)
from cascade_export.distill.label_store import LabelStore
from cascade_export.distill.labelling import label_sample
from cascade_export.distill.prompt_task import CREATE_TIERS, task_from_prompt
from cascade_export.distill.table_rows import read_table, sample_rows
from cascade_export.distill.teacher_check import check_prompt, check_teacher, unfit_message
from cascade_export.distill.teachers import (
    COLUMN_PREFIX,
    ENDPOINT_PREFIX,
    TEACHER_LLM,
    ColumnTeacher,
    EndpointTeacher,
    ServerTeacher,
    connect,
    teacher_prompt,
)

DEFAULT_BUDGET = 1000  # rows the teacher labels
DEFAULT_SAMPLE = DEFAULT_BUDGET  # its former name


STRATEGIES = (UNIFORM, ACTIVE)


# --------------------------------------------------------------------------------------------- the verb


def work_dir_of(task: str, root: str | Path) -> Path:
    """Where a task's distillation files live: the label cache, the labelled sample, the teacher prompt."""
    return Path(root) / task


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
    examples=None,
    min_teacher_accuracy: float | None = None,
    teacher_options: dict | None = None,
) -> dict:
    """``cascade label``: sample ``budget`` rows of the table (``strategy`` uniform, or active: see
    :func:`label_active`, which embeds rows with the embedder of the model repository ``repo``), label them
    with the teacher (cached, resumable), write ``labelled.csv`` (id, text, label, sample: uniform/active)
    and ``labels.json`` (the summary) into the task's work folder. ``sample`` is the former name of ``budget``.
    ``examples`` (``(texts, label indices)``) check the LLM teacher with the task's prompt first
    (:func:`~cascade_export.distill.teacher_check.check_prompt`): one that cannot do the task stops before any row is
    labelled; the check is in the summary. ``teacher``: ``llm_large`` (through the server at ``url``),
    ``openai:MODEL@URL`` (an endpoint called directly, :class:`EndpointTeacher` with ``teacher_options``: ``key_env``,
    ``concurrency``; the tokens it counted are the summary's ``teacher_usage``) or ``column:NAME``."""
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
    client, check, source = None, None, None
    try:
        if teacher.startswith(COLUMN_PREFIX):
            source = ColumnTeacher(table, teacher[len(COLUMN_PREFIX) :], task.labels)
            prompt = None
        elif teacher == TEACHER_LLM:
            prompt = teacher_prompt(task, data_dir, seed)
            client = connect(url or f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}")
            source = ServerTeacher(client, prompt)
            if examples is not None:
                check = check_prompt(source, task.labels, *examples, min_accuracy=min_teacher_accuracy)
                if check["verdict"] != "fit":
                    raise ConfigError(unfit_message(check, TEACHER_LLM))
        elif teacher.startswith(ENDPOINT_PREFIX):
            prompt = teacher_prompt(task, data_dir, seed)
            source = EndpointTeacher(teacher, prompt, **(teacher_options or {}))
            if progress:
                print(f"[label] teacher {source.mode}", flush=True)
            if examples is not None:
                check = check_prompt(source, task.labels, *examples, min_accuracy=min_teacher_accuracy)
                if check["verdict"] != "fit":
                    raise ConfigError(unfit_message(check, teacher))
        else:
            raise InvalidInput(
                f"unknown teacher {teacher!r}: use {TEACHER_LLM}, {ENDPOINT_PREFIX}MODEL@URL or {COLUMN_PREFIX}NAME"
            )
        start = time.perf_counter()
        active = None  # active sampling's sizes and timings
        with LabelStore(work / "labels.sqlite") as store:
            if strategy == ACTIVE:

                def embed_rows(texts: list[str]) -> np.ndarray:
                    from cascade_export.build.repo_embedder import embed, ensure_embedder

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
        if isinstance(source, EndpointTeacher):
            source.close()
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
        "teacher_check": check,
        # what an endpoint teacher said it used (tokens in and out, retries): the labelling's cost
        "teacher_usage": source.usage if isinstance(source, EndpointTeacher) else None,
    }
    (work / "labels.json").write_text(json.dumps(summary, indent=2))
    return summary


def teach_and_load(task, repo: str | Path, work_root: str | Path, client, options) -> tuple[dict, list[str], float]:
    """train -> calibrate -> export -> load from the task's ``labelled.csv`` (``options.labels_file`` is set
    here): the report, the models loaded and the seconds it took (the teacher's labelling is not in them)."""
    from dataclasses import replace

    from cascade_export.build.calibration import calibrate_task
    from cascade_export.build.commands import export_task
    from cascade_export.build.train import train_task

    start = time.perf_counter()
    work = work_dir_of(task.name, work_root)
    stage = work / "stage"
    train_task(task, repo, stage, replace(options, labels_file=str(work / "labelled.csv")))
    report = calibrate_task(task, repo, stage, target=options.target)
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
    examples: str | Path | None = None,
    example_columns: tuple[str, str] = ("text", "label"),
    descriptions: Sequence[str] | None = None,
    min_teacher_accuracy: float | None = None,
    on_check=None,
    confirm=None,
    metrics_url: str | None = None,
    llm_prices: dict | None = None,
) -> dict:
    """``cascade task create``: label -> train -> calibrate -> export -> load into a running server that takes model
    loads (``cascade serve``'s default; checked before the teacher's first call), without a restart. The teacher's time
    is reported apart, and :func:`label_warnings` says what looks wrong with its labels.
    ``budget`` and ``strategy`` as in :func:`run_label` (active sampling embeds with ``repo``'s embedder).

    With ``examples`` (a table of labelled rows, ``example_columns`` = its text and label columns), the teacher is
    checked on them first (:mod:`cascade_export.distill.teacher_check`): the task takes the prompt form that answers
    them best, and a teacher that cannot do the task stops the job before any row is labelled. ``descriptions``
    (one per label) are the words the teacher answers with, in place of the label names. ``on_check`` is given the
    check's report as soon as it is made (before a stop). Without examples, ``confirm(texts, labels)`` (a terminal's
    prompt) is shown the teacher's labels for the first :data:`CONFIRM_ROWS` rows of the sample and returns them as the
    user confirmed or corrected them: those rows are the examples. ``cost``: what the LLM tiers read, wrote and cost
    while the task was made (the server's counters at ``metrics_url``, default beside ``url``; priced by
    ``llm_prices``, model name: ``cascade.llm.meter.Price``, else the served tiers' own prices)."""
    from cascade.llm.cost_report import cost_report, metrics_url_for, scrape
    from cascade.tasks import load_task
    from cascade_export.build.stage import BuildOptions

    repo = Path(repo)
    if (repo / name).exists():
        raise ConfigError(f"{repo / name} exists: task {name!r} is already in the repository (pick another name)")
    labels = [label.strip() for label in labels]
    if descriptions is not None and len(descriptions) != len(labels):
        raise ConfigError(f"{len(descriptions)} label descriptions for {len(labels)} labels: give one per label")
    gold = read_examples(examples, labels, *example_columns) if examples is not None else None
    client = connect(url)
    metrics_url = metrics_url or metrics_url_for(url)
    at_start = scrape(metrics_url)
    try:
        client.check_loads()  # the task's models go into this server at the end: a server that refuses says so now
        check, form = None, _described_form(prompt, labels, descriptions)
        if gold is None and confirm is not None:
            gold = confirmed_rows(client, table_path, text_column, id_column, budget or sample, seed, confirm,
                                  task_from_prompt(name, labels, prompt, tiers, form)[0])  # fmt: skip
        if gold is not None:
            check = check_teacher(
                lambda p: ServerTeacher(client, p), prompt, labels, gold[0], gold[1], descriptions=descriptions,
                delta=delta, min_accuracy=min_teacher_accuracy,
            )  # fmt: skip
            check["examples_alone"] = examples_alone(embed_served(client, gold[0]), gold[1], seed)
            if on_check is not None:
                on_check(check)
            if check["verdict"] != "fit":
                raise ConfigError(unfit_message(check, TEACHER_LLM))
            form = check["chosen"]["prompt"]
        _, toml = task_from_prompt(name, labels, prompt, tiers, form)
        work = work_dir_of(name, work_root)
        work.mkdir(parents=True, exist_ok=True)
        task_file = work / "task.toml"
        task_file.write_text(toml + f"\n[calibration]\ntarget = {target}\ndelta = {delta}\n")
        task = load_task(task_file)  # what the later verbs will load: the same digest
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
        training = None if gold is None else weigh_examples(repo, work / "labelled.csv", gold, seed)
        options = BuildOptions(encoder_epochs=encoder_epochs, seed=seed, progress=progress)
        report, names, pipeline_s = teach_and_load(task, repo, work_root, client, options)
        trained = training is not None and training["chosen"] == BOTH
        on_gold = None if gold is None else gold_report(client, name, labels, gold, check, trained)
    finally:
        client.close()
    cost = cost_report(at_start, scrape(metrics_url), labelled["budget"], prices=llm_prices)
    warnings = label_warnings(labelled, report["calibration"], labels, None if gold is None else gold[1], training)
    if check is not None and check["reason"] is not None:  # a fit teacher with a caveat
        warnings.insert(0, check["reason"])
    return {
        "task": name,
        "task_file": str(task_file),
        "models": names,
        "labels": labelled,
        "calibration": report["calibration"],
        "gate": report["gate"],
        "teacher_scored": report["teacher_scored"],  # LLM tiers calibrated on the teacher's own probabilities
        "teacher_labelling_s": labelled["teacher_s"],
        "label_step_s": labelled["wall_s"],
        "train_calibrate_export_load_s": pipeline_s,
        "cost": cost.get("run", cost),  # the LLM tiers' tokens, CPU-seconds and cost while the task was made
        "teacher_check": check,
        "gold": on_gold,
        "training_labels": training,
        "warnings": warnings,
    }


#: Rows a terminal user confirms when task create has no examples.
CONFIRM_ROWS = 20


def confirmed_rows(client, table_path, text_column, id_column, budget, seed, confirm, spec) -> tuple[list, list]:
    """The first :data:`CONFIRM_ROWS` rows of the sample ``run_label`` draws, labelled by the teacher with the task's
    prompt and passed through ``confirm``: ``(texts, labels)``, the examples."""
    table = read_table(table_path, text_column, id_column)
    positions = sample_rows(len(table), budget or DEFAULT_BUDGET, seed)[:CONFIRM_ROWS]
    texts = [table.texts[int(i)] for i in positions]
    prompt = spec.llm[contract.TIER_LLM_LARGE].gate_prompt()
    predicted = ServerTeacher(client, prompt).label(positions, texts).argmax(axis=1)
    return texts, [int(x) for x in confirm(texts, predicted.tolist())]


def _described_form(prompt: str, labels: Sequence[str], descriptions: Sequence[str] | None) -> dict | None:
    """Task create's own form with the label descriptions as the words (None without descriptions)."""
    from cascade.tasks import prompt_from_question

    if not descriptions:
        return None
    instruction, template = prompt_from_question(prompt, descriptions)
    return {"instruction": instruction, "template": template, "verbalizations": list(descriptions), "calibrate": True}
