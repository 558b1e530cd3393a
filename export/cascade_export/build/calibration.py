"""``cascade calibrate``: the tiers' thresholds on the held-out rows of a trained stage, the gate model, and the
calibration report (``build_report.json``, ``calibration.json``, ``calibration.png``)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from cascade import contract
from cascade.calibrate import (
    calibrate_cascade,
    calibrate_for_budget,
    default_costs,
    expected_cost,
    plot_calibration,
    tier_mix,
)
from cascade.errors import ConfigError
from cascade.gate.config import GateConfig
from cascade.repository import configgen
from cascade.repository.writer import RepositoryWriter
from cascade.tasks import TaskSpec
from cascade_export.build.llm_tiers import ensure_llms, llm_scorer_on
from cascade_export.build.stage import CALIB_FILE, MODELS_DIR, load_stage, log, stage_embedder


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
    state = load_stage(task, stage, "cascade calibrate")
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
        if tier not in calib_probs:  # the large tier that taught has its probabilities in the stage already
            calib_probs[tier] = llm_scorer_on(tier, prompt, c_texts, scoring, repo)
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
        "teacher_scored": state.get("teacher_scored", []),
        "logreg_C": state.get("logreg_C"),
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
