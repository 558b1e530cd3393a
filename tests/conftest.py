"""Shared fixtures: a small real sst2 task built once, served by a real tritonserver on free ports."""

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def sst2_task():
    from cascade.tasks import load_task

    # A lower target than the demo's, so that the small calibration set keeps every tier enabled.
    return replace(load_task("sst2"), target=0.8)


@pytest.fixture(scope="session")
def built_repo(tmp_path_factory, sst2_task):
    from cascade.export.build import BuildOptions, build_task

    reuse = os.environ.get("CASCADE_TEST_REPO")
    if reuse:  # developers: reuse a repository built by an earlier run (skips the ~2 min build)
        repo = Path(reuse)
        if (repo / "sst2" / "build_report.json").is_file():
            for model in repo.iterdir():
                source = "gate" if model.name == sst2_task.name else "onnx_runner"
                if (model / "1" / "model.py").is_file():
                    shutil.copy2(REPO_ROOT / "python_backends" / source / "model.py", model / "1" / "model.py")
            return repo, json.loads((repo / "sst2" / "build_report.json").read_text())
    else:
        repo = tmp_path_factory.mktemp("repository") / "cpu"
    options = BuildOptions(train_rows=400, calib_rows=400, encoder_epochs=1, progress=False, keep_all_tiers=True)
    report = build_task(sst2_task, repo, options)
    return repo, report


@pytest.fixture(scope="session")
def server(built_repo):
    from cascade.launcher import ServerOptions, TritonServer, free_ports

    repo, _ = built_repo
    http, grpc, metrics = free_ports(3)
    opts = ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)
    with TritonServer(opts) as srv:
        yield srv


@pytest.fixture
def client(server):
    from cascade.client import CascadeClient

    with CascadeClient(server.grpc_url) as c:
        yield c
