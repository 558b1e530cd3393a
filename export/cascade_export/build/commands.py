"""Build a task into a model repository: train -> calibrate -> export (:func:`build_task`), and what a build
measured (:func:`build_figures`, :func:`build_result`). The steps live in :mod:`~cascade_export.build.train` (reading
``labelled.csv`` with :mod:`~cascade_export.build.labels_file`, or the dataset's gold labels without one) and
:mod:`~cascade_export.build.calibration`, what they share in :mod:`~cascade_export.build.stage`, the repository's
shared models in :mod:`~cascade_export.build.repo_embedder` and :mod:`~cascade_export.build.llm_tiers`.
"""

from __future__ import annotations

import time
from pathlib import Path

from cascade import contract, embedders
from cascade.errors import ConfigError
from cascade.repository.writer import RepositoryWriter
from cascade.tasks import TaskSpec
from cascade_export.build.calibration import calibrate_task
from cascade_export.build.llm_tiers import ensure_llms
from cascade_export.build.repo_embedder import ensure_embedder
from cascade_export.build.stage import MODELS_DIR, BuildOptions, load_stage, log, stage_embedder
from cascade_export.build.train import train_task


def export_task(task: TaskSpec, repo: Path, stage: Path) -> list[str]:
    """``cascade export``: the staged task models and gate into ``repo`` in one atomic step (each model
    folder is renamed into place); the shared embedder and LLM scorers are written first if missing."""
    stage = Path(stage)
    state = load_stage(task, stage, "cascade export")
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


def build_task(task: TaskSpec, repo: Path, opts: BuildOptions = BuildOptions()) -> dict:  # noqa: B008
    """train -> calibrate -> export in one go, staged in a temporary folder beside the repository."""
    import tempfile

    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=repo.parent, prefix=f".{task.name}.build-") as tmp:
        train_task(task, repo, Path(tmp), opts)
        report = calibrate_task(
            task,
            repo,
            Path(tmp),
            target=opts.target,
            min_coverage=opts.min_coverage,
            keep_all_tiers=opts.keep_all_tiers,
        )
        export_task(task, repo, Path(tmp))
    report["timings"]["total_s"] = time.perf_counter() - t0
    log(f"task {task.name} written to {repo} in {report['timings']['total_s']:.1f} s")
    return report


def build_figures(report: dict, repo: Path) -> dict:
    """What a build measured, from its report: the embedder, the rows used, the seconds of each stage
    (``timings``: embedder export, embedding, each tier's training, the LLM tiers' scoring, calibration, total),
    tier 0's cross-validated C and per tier the calibration (threshold, coverage, agreement, lower bound, enabled,
    ``note``: why not)."""
    found = embedders.of_repository(repo)
    return {
        "embedder": found.name if found is not None else report["options"].get("embedder"),
        "reference": report["reference"],
        "train_rows": report["train_rows"],
        "calib_rows": report["calib_rows"],
        "logreg_C": report.get("logreg_C"),  # tier 0's C, chosen by cross-validation (None without tier 0)
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
