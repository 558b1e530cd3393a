"""Result files (cascade.results): the demo's and the build's figures, and the label step's summary."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import pytest

from cascade.calibrate import TierCalibration
from cascade.paths import RESULTS_DIR
from cascade.results import BUDGET_ENV, commit, save_result

BUILD_KEYS = {
    "benchmark", "when", "command", "task", "task_digest", "repo", "embedder", "reference", "train_rows", "calib_rows",
    "logreg_C", "target", "delta", "expected_cost_ms", "timings", "tiers", "calibration", "options", "machine",
    "commit",
}  # fmt: skip
CALIBRATION_KEYS = {"tier", "tier_name", "rows", "enabled", "threshold", "coverage", "agreement", "lower_bound", "note"}
DEMO_KEYS = {
    "benchmark", "when", "command", "task", "embedder", "teacher", "built", "repo", "rows", "batch_size", "in_flight",
    "stages", "accuracy", "per_tier", "llm_share", "degraded_rows", "best_effort_rows", "rows_per_s", "wall_s",
    "batch_latency_ms_p50", "batch_latency_ms_p99", "teacher_rows_per_s", "labelling", "build", "machine",
    "commit", "setup", "with_setup_s", "cost", "teaching_cost",
}  # fmt: skip


def only_file(folder: Path, prefix: str) -> dict:
    files = sorted(folder.glob(f"{prefix}-*.json"))
    assert len(files) == 1, files
    assert files[0].stem.removeprefix(prefix + "-").replace("-", "").isdigit()  # <prefix>-YYYYmmdd-HHMMSS
    return json.loads(files[0].read_text())


def test_save_result_names_the_file_by_name_and_local_time(tmp_path):
    from cascade.bench import gate as bench

    path = save_result("demo", {"benchmark": "demo", "rows": 3}, tmp_path / "new")
    saved = json.loads(path.read_text())
    assert path.parent == tmp_path / "new" and saved["benchmark"] == "demo" and saved["rows"] == 3
    assert saved["commit"] == commit() and len(saved["machine"]["load_before"]) == 3  # stamped: commit, machine
    assert "time_budget" not in saved  # no budget stated
    assert only_file(tmp_path / "new", "demo")["rows"] == 3
    assert bench.save({"x": 1}, "gate", tmp_path).name.startswith("gate-")  # the benchmarks' one save
    assert RESULTS_DIR == Path(__file__).resolve().parents[2] / "bench" / "results"


def fake_report(task) -> dict:
    """The shape of :func:`cascade_export.build.calibration.calibrate_task`'s report, with the build's total."""
    from cascade_export.build.stage import BuildOptions

    calibration = [
        TierCalibration(0, 500, True, 0.609, 0.726, 0.931, 0.905),
        TierCalibration(1, 137, False, None, 0.504, 0.681, 0.577, "disabled: no cut reaches the target 0.9"),
        TierCalibration(4, 137, True, None, 1.0, 1.0, 0.978),
    ]
    return {
        "task": task.name,
        "task_digest": task.digest(),
        "labels": list(task.labels),
        "reference": "gold labels of the dataset",
        "options": asdict(BuildOptions()),
        "train_rows": 2000,
        "calib_rows": 500,
        "target": 0.9,
        "delta": 0.05,
        "budget_ms": None,
        "expected_cost_ms": 12.5,
        "calibration": [c.to_dict() for c in calibration],
        "gate": {},
        "timings": {"embedder_export_s": 9.0, "embed_s": 10.8, "train_logreg_s": 0.7, "calibrate_s": 47.0},
    }


def test_cascade_build_saves_its_figures(tmp_path, monkeypatch, capsys):
    from cascade.cli.main import main
    from cascade_export.build import commands as build

    def fake_build(task, repo, opts):
        assert opts.train_rows == 100
        return fake_report(task) | {"timings": fake_report(task)["timings"] | {"total_s": 70.0}}

    monkeypatch.setattr(build, "build_task", fake_build)
    args = ["build", "--task", "sst2", "--repo", str(tmp_path / "repo"), "--train-rows", "100"]
    assert main([*args, "--results-dir", str(tmp_path / "results")]) == 0
    assert f"saved {tmp_path / 'results'}" in capsys.readouterr().out
    result = only_file(tmp_path / "results", "build-sst2")
    assert set(result) == BUILD_KEYS
    assert result["benchmark"] == "build" and result["command"].startswith("cascade build --task sst2")
    assert result["timings"]["total_s"] == 70.0 and result["train_rows"] == 2000 and result["calib_rows"] == 500
    assert result["tiers"] == ["logreg", "llm_large"]
    assert all(set(c) == CALIBRATION_KEYS for c in result["calibration"])
    disabled = result["calibration"][1]
    assert disabled["tier_name"] == "xgboost" and not disabled["enabled"] and "no cut" in disabled["note"]
    assert main([*args, "--no-save", "--results-dir", str(tmp_path / "none")]) == 0
    assert not (tmp_path / "none").exists()


def test_an_unwritable_results_folder_only_warns(tmp_path, monkeypatch, capsys):
    from cascade.cli.main import main
    from cascade_export.build import commands as build

    monkeypatch.setattr(build, "build_task", lambda task, repo, opts: fake_report(task))
    (tmp_path / "file").write_text("")
    assert main(["build", "--repo", str(tmp_path / "repo"), "--results-dir", str(tmp_path / "file" / "x")]) == 0
    assert "warning: results not saved" in capsys.readouterr().err


class FakeServer:
    def __init__(self, opts) -> None:
        self.grpc_url = f"127.0.0.1:{opts.grpc_port}"
        self.metrics_url = None  # no /metrics: the demo reports no cost

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class FakeClient:
    """Tier 0 answers the even rows of a batch, the large tier the odd ones; the last row is best-effort."""

    def __init__(self, url, timeout_s=None) -> None:
        self.url = url

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def classify(self, task, texts):
        from cascade_client import Prediction

        cheap, large = Prediction("positive", 0.9, 0), Prediction("negative", 0.6, 4)
        answers = [cheap if i % 2 == 0 else large for i in range(len(texts))]
        return answers[:-1] + [replace(answers[-1], degraded=True)]


def test_cascade_demo_saves_what_it_printed(tmp_path, monkeypatch, capsys):
    import cascade_client as client
    from cascade.cli import demo
    from cascade.cli.main import main
    from cascade.server import launcher
    from cascade.tasks import load_task

    task = load_task("sst2")
    repo = tmp_path / "repo"
    (repo / "sst2").mkdir(parents=True)
    (repo / "sst2" / "build_report.json").write_text(json.dumps(fake_report(task)))  # the build that made it
    monkeypatch.setattr(demo, "task_is_built", lambda task, repo: True)
    monkeypatch.setattr(launcher, "TritonServer", FakeServer)
    monkeypatch.setattr(client, "CascadeClient", FakeClient)
    args = ["demo", "--repo", str(repo), "--rows", "40", "--batch-size", "8", "--results-dir", str(tmp_path / "out")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "40 rows, accuracy" in out and f"saved {tmp_path / 'out'}" in out
    result = only_file(tmp_path / "out", "demo")
    assert set(result) == DEMO_KEYS, set(result) ^ DEMO_KEYS
    assert result["benchmark"] == "demo" and result["command"].startswith("cascade demo --repo")
    assert result["task"] == "sst2" and result["rows"] == 40 and result["batch_size"] == 8
    assert result["built"] is False and result["teacher"] is None and result["labelling"] is None
    assert set(result["per_tier"]) == {"logreg", "llm_large"}
    assert sum(t["share"] for t in result["per_tier"].values()) == pytest.approx(1.0)
    assert result["llm_share"] == result["per_tier"]["llm_large"]["share"]
    assert result["best_effort_rows"] == result["degraded_rows"] >= 1
    assert {"server_start_s", "warmup_s", "classify_s", "total_s"} <= set(result["stages"])
    assert result["build"]["calibration"][0]["threshold"] == 0.609  # the served task's build
    assert result["embedder"] is None  # no embedder in this repository


def test_a_demo_that_builds_keeps_the_teachers_figures(tmp_path, monkeypatch):
    """The large tier teaches (faked here): its rows/s and each stage's seconds go into the summary."""
    import cascade_client as client
    from cascade.cli import demo
    from cascade.server import launcher
    from cascade.tasks import load_task
    from cascade_export.build import commands as build
    from cascade_export.distill import commands as distill

    labelled = {
        "teacher": "llm_large:qwen", "sample": 1000, "labelled_rows": 1000, "cached_rows": 0, "teacher_s": 300.0,
        "teacher_rows_per_s": 3.33, "wall_s": 301.0, "label_counts": {"negative": 494, "positive": 506},
        "teacher_prompt": {"template": "..."},
    }  # fmt: skip
    monkeypatch.setattr(demo, "task_is_built", lambda task, repo: False)
    monkeypatch.setattr(build, "ensure_embedder", lambda repo: None)
    monkeypatch.setattr(build, "ensure_llms", lambda repo: None)
    monkeypatch.setattr(distill, "run_label", lambda *args, **kwargs: labelled)
    monkeypatch.setattr(distill, "teach_and_load", lambda task, *args: (fake_report(task), [task.name], 135.0))
    monkeypatch.setattr(launcher, "TritonServer", FakeServer)
    monkeypatch.setattr(client, "CascadeClient", FakeClient)
    summary = demo.run_demo(load_task("sst2"), tmp_path / "repo", rows=16, work_root=tmp_path / "runs")
    result = demo.demo_result(summary, command="cascade demo")
    assert set(result) == DEMO_KEYS - {"commit"} and result["built"] is True  # commit: when saved
    assert result["teacher"] == "llm_large:qwen"
    assert result["teacher_rows_per_s"] == 3.33 and "teacher_prompt" not in result["labelling"]
    assert result["stages"]["labelling_s"] == 301.0 and result["stages"]["train_calibrate_export_load_s"] == 135.0
    assert result["build"]["timings"]["train_calibrate_export_load_s"] == 135.0
    assert result["build"]["tiers"] == ["logreg", "llm_large"]
    json.dumps(result)


def test_the_label_summary_has_its_seconds_and_rate(tmp_path):
    from cascade.tasks import TaskSpec
    from cascade_export.distill.commands import run_label

    path = tmp_path / "t.csv"
    pd.DataFrame({"review": [f"review {i}" for i in range(30)], "gold": [i % 2 for i in range(30)]}).to_csv(path)
    task = TaskSpec(name="reviews", labels=("negative", "positive"), tiers=(0,))
    run_label(task, tmp_path / "runs", path, text_column="review", budget=20, teacher="column:gold", progress=False)
    summary = json.loads((tmp_path / "runs" / "reviews" / "labels.json").read_text())
    assert summary["wall_s"] > 0 and summary["teacher_s"] >= 0 and summary["rows_per_s"] > 0
    assert "teacher_rows_per_s" in summary and summary["when"][:2] == "20"


def test_a_stated_time_budget_is_recorded_with_its_verdict(tmp_path, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "3600")
    kept = json.loads(save_result("x", {"machine": {"cpus": 99}}, tmp_path).read_text())
    assert kept["time_budget"]["seconds"] == 3600 and kept["time_budget"]["within"] is True
    assert kept["machine"]["cpus"] == 99 and "load_at_save" in kept["machine"]  # the payload's own keys win
    monkeypatch.setenv(BUDGET_ENV, "0.001")
    assert json.loads(save_result("y", {}, tmp_path).read_text())["time_budget"]["within"] is False


def test_the_demo_adds_a_setup_that_finished_just_before_it(tmp_path):
    from datetime import UTC, datetime, timedelta

    from cascade.cli.demo import SAME_RUN_S, setup_record

    assert setup_record(60.0, str(tmp_path)) is None  # no record: an install not made by `make setup`
    finished = datetime.now(UTC) - timedelta(seconds=100)
    (tmp_path / ".setup.json").write_text(json.dumps({"seconds": 600, "finished": finished.isoformat()}))
    assert setup_record(60.0, str(tmp_path))["just_before"] is True  # the demo started 40 s after setup
    assert setup_record(101.0, str(tmp_path))["just_before"] is False  # the demo started before setup ended
    (tmp_path / ".setup.json").write_text(json.dumps({"seconds": 600, "finished": (finished - timedelta(
        seconds=SAME_RUN_S)).isoformat()}))  # fmt: skip
    assert setup_record(60.0, str(tmp_path))["just_before"] is False  # an older setup: not this demo's
