"""Distillation step 1 (cascade label) with real models: labels through the server, resumes after a kill, builds and
the CLI verbs on the small embedder."""

import json

import numpy as np
import pandas as pd
import pytest

from cascade.errors import ConfigError, ServerError
from cascade.tasks import TaskSpec
from cascade_export.distill.commands import run_label
from cascade_export.distill.examples import BOTH, EXAMPLES, TEACHER
from cascade_export.distill.label_store import LabelStore

LABELS = ("negative", "positive")


@pytest.mark.server
def test_the_large_tier_labels_through_the_server(server, sst2_task, tmp_path):
    """The teacher is llm_large on the real server; a second run is served from the cache."""
    from cascade.tasks import load_split

    summary = run_label(sst2_task, tmp_path, sample=24, url=server.grpc_url, progress=False)
    assert summary["teacher"].startswith("llm_large:") and summary["labelled_rows"] == 24
    frame = pd.read_csv(tmp_path / "sst2" / "labelled.csv")
    texts, gold = load_split(sst2_task, "train")
    gold_of = dict(zip(texts, gold, strict=False))
    agreement = np.mean([gold_of[t] == y for t, y in zip(frame["text"], frame["label"], strict=True)])
    # The teacher's accuracy on SST-2 validation is 0.9255 (eval-sst2-validation-teacher-20261129-225416.json); at
    # that rate fewer than 20 of 24 rows agree with p = 0.03, fewer than 19 with p = 0.007.
    assert agreement >= 19 / 24
    # The teacher names the model it is, and its probabilities are kept as soft labels.
    assert summary["teacher"].startswith("llm_large:qwen2.5-coder-1.5b:") and summary["soft_label_rows"] == 24
    probs = frame[["prob_0", "prob_1"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4) and (probs.argmax(axis=1) == frame["label"]).all()
    again = run_label(sst2_task, tmp_path, sample=24, url=server.grpc_url, progress=False)
    assert again["cached_rows"] == 24 and again["teacher_s"] == 0


def test_build_learns_from_teacher_labels(tmp_path):
    """label (a label column as teacher) -> build --labels: tiers trained and calibrated on those labels."""
    from cascade.gate.config import GateConfig
    from cascade.tasks import load_split, load_task
    from cascade_export.build.commands import build_task
    from cascade_export.build.stage import BuildOptions

    texts, gold = load_split(load_task("sst2"), "train", limit=400)
    pd.DataFrame({"sentence": texts, "stars": [LABELS[g] for g in gold]}).to_csv(tmp_path / "t.csv", index=False)
    task = TaskSpec(name="reviews", labels=LABELS, tiers=(0, 1), target=0.8)
    run_label(
        task,
        tmp_path / "runs",
        tmp_path / "t.csv",
        text_column="sentence",
        sample=300,
        teacher="column:stars",
        progress=False,
    )
    labels_file = tmp_path / "runs" / "reviews" / "labelled.csv"
    options = BuildOptions(
        labels_file=str(labels_file), calib_fraction=0.3, progress=False, keep_all_tiers=True, embedder="minilm-l6"
    )  # the small embedder: quick (tests/server/test_wide_embedder.py builds with the default)
    report = build_task(task, tmp_path / "repo", options)
    assert report["reference"].startswith("teacher labels (column:stars)")
    assert report["train_rows"] == 210 and report["calib_rows"] == 90
    assert GateConfig.from_parameters(report["gate"]).tiers == (0, 1)
    assert (tmp_path / "repo" / "reviews_logreg" / "1" / "model.onnx").is_file()
    calibration = json.loads((tmp_path / "repo" / "reviews" / "calibration.json").read_text())
    assert [t["tier"] for t in calibration["tiers"]] == [0, 1] and "logreg" in calibration["curves"]
    assert (tmp_path / "repo" / "reviews" / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="too few"):
        build_task(task, tmp_path / "repo", BuildOptions(labels_file=str(labels_file), calib_fraction=0.9))


def test_a_label_no_training_row_holds_learns_from_its_name(tmp_path):
    """A teacher that never gave one of the labels (a many-label task's rare intent): the cheap tiers still learn every
    label, the missing one from its own name, and answer with a probability for each."""
    import onnxruntime as ort

    from cascade.tasks import load_split, load_task
    from cascade_export.build.commands import build_task
    from cascade_export.build.repo_embedder import embed
    from cascade_export.build.stage import BuildOptions

    texts, gold = load_split(load_task("sst2"), "train", limit=300)
    pd.DataFrame({"sentence": texts, "stars": [LABELS[g] for g in gold]}).to_csv(tmp_path / "t.csv", index=False)
    task = TaskSpec(name="three", labels=(*LABELS, "mixed"), tiers=(0, 1), target=0.8)
    run_label(task, tmp_path / "runs", tmp_path / "t.csv", text_column="sentence", sample=300, teacher="column:stars",
              progress=False)  # fmt: skip
    options = BuildOptions(
        labels_file=str(tmp_path / "runs" / "three" / "labelled.csv"), calib_fraction=0.3, progress=False,
        keep_all_tiers=True, embedder="minilm-l6",
    )  # fmt: skip
    report = build_task(task, tmp_path / "repo", options)
    assert report["train_rows"] == 210 + 1  # the teacher's rows, and "mixed" as one row of its own
    x = embed(tmp_path / "repo", ["mixed", "a gorgeous , moving film ."])
    for tier in ("logreg", "xgboost"):
        session = ort.InferenceSession(str(tmp_path / "repo" / f"three_{tier}" / "1" / "model.onnx"))
        probs = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[-1]
        assert np.asarray(probs).shape == (2, 3)


def test_the_cli_verbs_chain_label_train_calibrate_export(tmp_path, capsys):
    from cascade.cli.main import main
    from cascade.tasks import load_split, load_task

    texts, gold = load_split(load_task("sst2"), "train", limit=300)
    pd.DataFrame({"sentence": texts, "stars": gold}).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "reviews.toml").write_text(
        'name = "reviews"\nlabels = ["negative", "positive"]\ntiers = ["logreg", "xgboost"]\n'
        "[calibration]\ntarget = 0.8\n"
    )
    task, work, repo = str(tmp_path / "reviews.toml"), str(tmp_path / "runs"), str(tmp_path / "repo")
    common = ["--task", task, "--work-dir", work]
    assert main(["calibrate", *common, "--repo", repo]) == 2
    assert "run `cascade train` before `cascade calibrate`" in capsys.readouterr().err
    table = ["--table", str(tmp_path / "t.csv"), "--column", "sentence"]
    assert main(["label", *common, *table, "--sample", "250", "--teacher", "column:stars"]) == 0
    labels = str(tmp_path / "runs" / "reviews" / "labelled.csv")
    assert main(["train", *common, "--repo", repo, "--labels", labels, "--embedder", "minilm-l6"]) == 0
    assert main(["export", *common, "--repo", repo]) == 2
    assert "not calibrated" in capsys.readouterr().err
    assert main(["calibrate", *common, "--repo", repo, "--target", "1.5"]) == 2
    assert main(["calibrate", *common, "--repo", repo, "--budget-ms", "100"]) == 0  # budget mode
    budget = json.loads((tmp_path / "runs" / "reviews" / "stage" / "calibration.json").read_text())
    assert budget["budget_ms"] == 100 and budget["expected_cost_ms"] <= 100 and budget["target"] == 0.99
    assert main(["calibrate", *common, "--repo", repo, "--target", "0.8", "--delta", "0.1"]) == 0
    calibration = json.loads((tmp_path / "runs" / "reviews" / "stage" / "calibration.json").read_text())
    assert calibration["target"] == 0.8 and calibration["delta"] == 0.1
    assert main(["export", *common, "--repo", repo]) == 0
    assert {p.name for p in (tmp_path / "repo").iterdir()} >= {
        "embedder",
        "reviews",
        "reviews_logreg",
        "reviews_xgboost",
    }
    report = json.loads((tmp_path / "repo" / "reviews" / "build_report.json").read_text())
    assert report["train_rows"] == 125 and report["calib_rows"] == 125  # --calib-fraction 0.5 by default


@pytest.mark.server
def test_task_create_loads_a_new_task_into_a_running_server(built_repo, tmp_path):
    """The whole flow against a real server started as plain ``cascade serve`` starts it: no restart."""
    import shutil

    from cascade import contract
    from cascade.cli.main import build_parser
    from cascade.cli.serve import server_options
    from cascade.server.launcher import TritonServer, free_ports
    from cascade.tasks import load_split, load_task
    from cascade_client import CascadeClient
    from cascade_export.distill.commands import create_task

    repo = tmp_path / "repo"
    for model in (contract.EMBEDDER_MODEL, *(contract.TIER_NAMES[t] for t in contract.LLM_TIERS)):
        shutil.copytree(built_repo[0] / model, repo / model)
    texts, _ = load_split(load_task("sst2"), "train", limit=400)
    pd.DataFrame({"review": texts}).to_csv(tmp_path / "reviews.csv", index=False)
    gold_texts, gold = load_split(load_task("sst2"), "validation", limit=14)  # the user's examples: rows of their own
    names = ["negative", "positive"]
    pd.DataFrame({"text": gold_texts, "label": [names[g] for g in gold]}).to_csv(tmp_path / "gold.csv", index=False)
    ports = [str(p) for p in free_ports(3)]
    args = ["serve", "--repo", str(repo), "--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]]
    opts = server_options(build_parser().parse_args(args))
    assert opts.model_control_mode == "explicit" and opts.load_models == ["*"]  # cascade serve's defaults
    with TritonServer(opts) as server:
        result = create_task(
            "moviesent",
            tmp_path / "reviews.csv",
            "Review: {text}\nSentiment:",
            ["negative", "positive"],
            repo=repo,
            work_root=tmp_path / "runs",
            url=server.grpc_url,
            text_column="review",
            sample=200,
            tiers=["logreg", "xgboost", "llm_large"],
            target=0.8,
            progress=False,
            examples=tmp_path / "gold.csv",
        )
        assert result["models"] == ["moviesent_logreg", "moviesent_xgboost", "moviesent"]
        # The teacher was checked on the examples first, and the served task is reported on them beside it.
        assert result["teacher_check"]["verdict"] == "fit" and result["teacher_check"]["examples"] == 14
        on_gold = result["gold"]
        assert on_gold["examples"] == 14 and on_gold["teacher"] == result["teacher_check"]["accuracy"]
        assert 0.5 < on_gold["cascade"] <= 1.0 and sum(on_gold["cascade_tiers"].values()) == 14
        # The examples weighed as training labels: tier 0 cross-validated on them, trained on each source of labels;
        # where the examples beside the teacher's labels won, they trained the cheap tiers (never calibrated).
        training = result["training_labels"]
        assert set(training["accuracy"]) == {TEACHER, EXAMPLES, BOTH} and training["examples"] == 14
        assert training["chosen"] in (TEACHER, BOTH) and 0.0 <= result["teacher_check"]["examples_alone"] <= 1.0
        labelled = pd.read_csv(tmp_path / "runs" / "moviesent" / "labelled.csv")
        assert (labelled["sample"] == "gold").sum() == (14 if training["chosen"] == BOTH else 0)
        assert on_gold["examples_trained"] == (training["chosen"] == BOTH)
        assert result["labels"]["labelled_rows"] == 200
        # The served large tier taught: calibration read its probabilities from the labels, it did not score again.
        assert result["teacher_scored"] == ["llm_large"]
        large = next(c for c in result["calibration"] if c["tier"] == contract.TIER_LLM_LARGE)
        assert large["rows"] > 0 and large["agreement"] == 1.0
        with CascadeClient(server.grpc_url) as client:
            assert "moviesent" in client.tasks()
            got = client.classify("moviesent", ["a gorgeous , moving film .", "a dull , lifeless mess ."])
        assert [p.label for p in got] == ["positive", "negative"]
        with pytest.raises(ConfigError, match="already in the repository"):
            create_task(
                "moviesent",
                tmp_path / "reviews.csv",
                "x",
                ["a", "b"],
                repo=repo,
                work_root=tmp_path / "runs",
                url=server.grpc_url,
            )


@pytest.mark.server
def test_task_create_into_a_server_that_cannot_load_models_stops_before_the_teacher(server, tmp_path):
    """A server started with --model-control-mode none would refuse the task's models at the very end: task create
    asks first, and stops at once with the fix, before any row is labelled."""
    import time

    from cascade_client import CascadeClient
    from cascade_export.distill.commands import create_task

    pd.DataFrame({"text": ["a fine film", "a dull film"] * 20}).to_csv(tmp_path / "t.csv", index=False)
    start = time.monotonic()
    with pytest.raises(ServerError, match="--model-control-mode=none") as info:
        create_task(
            "nomodels", tmp_path / "t.csv", "Is it good?", ["no", "yes"], repo=tmp_path / "repo",
            work_root=tmp_path / "runs", url=server.grpc_url, progress=False,
        )  # fmt: skip
    assert "cascade serve" in str(info.value) and time.monotonic() - start < 30
    assert _cached(tmp_path / "runs", "nomodels") == 0
    with CascadeClient(server.grpc_url) as client:
        assert "__cascade_load_probe__" not in str(client.model_stats())


def _cached(work, task: str) -> int:
    path = work / task / "labels.sqlite"
    if not path.exists():
        return 0
    with LabelStore(path) as store:
        return store.count(task)


def _wait_for_cached(work, task: str, at_least: int, timeout_s: float = 180) -> int:
    import time

    deadline = time.monotonic() + timeout_s
    while (n := _cached(work, task)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


@pytest.mark.server
def test_label_killed_mid_run_resumes_from_the_cache(server, sst2_task, tmp_path):
    """kill -9 of a `cascade label` process after its first committed batch: the rerun takes the committed
    labels from the SQLite cache, asks the teacher for the rest only, and ends with every row labelled once."""
    import os
    import signal
    import subprocess
    import sys

    work = tmp_path / "runs"
    cmd = [sys.executable, "-m", "cascade.cli.main", "label", "--task", sst2_task.name, "--sample", "64"]
    cmd += ["--url", server.grpc_url, "--work-dir", str(work)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        kept = _wait_for_cached(work, sst2_task.name, 32)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait(30)
    assert first.returncode == -signal.SIGKILL and 32 <= kept < 64
    kept = _cached(work, sst2_task.name)  # a batch may have been committed just before the kill
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{64 - kept} new, {kept} from the cache" in again.stdout
    frame = pd.read_csv(work / sst2_task.name / "labelled.csv")
    assert len(frame) == 64 and frame["id"].is_unique and _cached(work, sst2_task.name) == 64


@pytest.mark.server
def test_label_resumes_after_the_server_is_killed(built_repo, sst2_task, tmp_path):
    """kill -9 of the server (the teacher) mid-run: the run stops saying what is kept; after a restart the rerun
    resumes, and its labels equal those of an uninterrupted run, row for row."""
    import os
    import signal
    import threading

    from cascade.server.launcher import ServerOptions, TritonServer, free_ports

    repo, _ = built_repo
    http, grpc, metrics = free_ports(3)
    opts = ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)
    work = tmp_path / "runs"
    outcome = {}

    def job(url):
        try:
            outcome["summary"] = run_label(sst2_task, work, sample=64, url=url, progress=False)
        except ServerError as exc:
            outcome["error"] = exc

    with TritonServer(opts) as server:
        worker = threading.Thread(target=job, args=(server.grpc_url,))
        worker.start()
        _wait_for_cached(work, sst2_task.name, 32)
        os.killpg(server.pid, signal.SIGKILL)
        worker.join(60)
    assert "error" in outcome, "the run should stop when the server is gone"
    kept = _cached(work, sst2_task.name)
    assert 32 <= kept < 64
    assert f"{kept} of 64 labels are kept" in str(outcome["error"]) and "rerun the same command" in str(
        outcome["error"]
    )
    with TritonServer(opts) as server:
        resumed = run_label(sst2_task, work, sample=64, url=server.grpc_url, progress=False)
        reference = run_label(sst2_task, tmp_path / "ref", sample=64, url=server.grpc_url, progress=False)
    assert resumed["cached_rows"] == kept and resumed["labelled_rows"] == 64 - kept
    assert reference["cached_rows"] == 0
    got = pd.read_csv(work / sst2_task.name / "labelled.csv")
    want = pd.read_csv(tmp_path / "ref" / sst2_task.name / "labelled.csv")
    assert got["id"].tolist() == want["id"].tolist() and got["label"].tolist() == want["label"].tolist()
