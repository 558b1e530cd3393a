"""Result files (cascade.results) of a real build (tier 0, the small embedder)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

#: As in tests/unit/test_results.py: the keys of ``cascade build``'s result file and of each tier's calibration.
BUILD_KEYS = {
    "benchmark", "when", "command", "task", "task_digest", "repo", "embedder", "reference", "train_rows", "calib_rows",
    "logreg_C", "target", "delta", "expected_cost_ms", "timings", "tiers", "calibration", "options", "machine",
}  # fmt: skip
CALIBRATION_KEYS = {"tier", "tier_name", "rows", "enabled", "threshold", "coverage", "agreement", "lower_bound", "note"}


def embedder_into(repo: Path) -> None:
    """The small embedder into ``repo``: copied from $CASCADE_TEST_REPO's where it has one, else exported."""
    from cascade_export.build.repo_embedder import ensure_embedder

    reuse = Path(os.environ.get("CASCADE_TEST_REPO", "/nonexistent")) / "embedder"
    if (reuse / "1" / "model.onnx").is_file() and "384" in (reuse / "config.pbtxt").read_text():
        shutil.copytree(reuse, repo / "embedder", ignore=shutil.ignore_patterns("__pycache__"))
    ensure_embedder(repo, "minilm-l6")


def test_a_real_build_has_every_figure(tmp_path):
    """A tier-0 build from 100 + 100 gold rows: the report holds what build_result reads."""
    from cascade.tasks import load_task
    from cascade_export.build import tabular
    from cascade_export.build.commands import build_result, build_task
    from cascade_export.build.stage import BuildOptions

    task = replace(load_task("sst2"), tiers=(0,), target=0.6)
    repo = tmp_path / "repo"
    embedder_into(repo)
    options = BuildOptions(train_rows=100, calib_rows=100, progress=False, keep_all_tiers=True, embedder="minilm-l6")
    result = build_result(task, repo, build_task(task, repo, options), command="cascade build --task sst2")
    assert set(result) == BUILD_KEYS and result["embedder"] == "minilm-l6"
    assert result["train_rows"] == 100 and result["calib_rows"] == 100 and result["tiers"] == ["logreg"]
    assert result["logreg_C"] in tabular.LOGREG_CS  # chosen by cross-validation on the 100 training rows
    assert {"embedder_export_s", "embed_s", "train_logreg_s", "calibrate_s", "total_s"} <= set(result["timings"])
    assert [c["tier_name"] for c in result["calibration"]] == ["logreg"]
    assert set(result["calibration"][0]) == CALIBRATION_KEYS
    json.dumps(result)  # all of it serializable
