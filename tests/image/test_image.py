"""The CPU container image (``make image``), run with podman as the Helm chart's pod runs it (values-cpu.yaml:
read-only root file system, uid 1000, no capabilities): ``make test-image``, never ``make test`` (pyproject's
testpaths are tests/unit and tests/server).

The model repository is ``.image/model_repository``, mounted at ``/models`` as the chart mounts its PVC. The chart's
init container fills it: its rendered image (the build image), command and environment, with a smaller build
appended (:data:`BUILD_ARGS`); a repository whose sst2 build matches the task is kept, its ``model.py`` glue
refreshed by the build image. Then two servers classify SST-2 validation rows over gRPC in the serving image: its
entrypoint (``cascade serve``) and the chart's rendered ``tritonserver`` command and arguments (ports set to free
ones). The last test writes ``bench/results/image-*.json`` and checks the budgets (cascade.ops.image.BUDGETS).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from cascade.ops import image as img
from cascade.paths import CHART_DIR
from cascade.results import commit, now_iso, save_result
from cascade.server.options import free_ports
from cascade.tasks import load_split, load_task

ROWS = int(os.environ.get("CASCADE_IMAGE_ROWS", "200"))
#: Well above chance (0.5): the task is calibrated to agree with gold labels at 0.9 (tasks/sst2.toml).
MIN_ACCURACY = 0.8
#: Seconds allowed to get ready before a run counts as failed (the budget is checked in the last test).
READY_TIMEOUT_S = 300
#: Appended to the init container's `cascade build`: the tests' small build (tests/conftest.py) on the default embedder.
BUILD_ARGS = " --train-rows 400 --calib-rows 400 --encoder-epochs 1"
REPO_DIR = img.CACHE_DIR / "model_repository"
FIGURES: dict[str, dict] = {}


def existing(name: str) -> dict:
    if img.podman("image", "exists", name, check=False).returncode != 0:
        pytest.fail(f"no image {name}: run `make image` first")
    return img.image_info(name)


@pytest.fixture(scope="module")
def built_image():
    return existing(img.image_name())


@pytest.fixture(scope="module")
def build_image():
    """The init container's image: what values-cpu.yaml names, the one `make image` tags."""
    return existing(img.build_image_name())


def render(ports: tuple[int, int, int], tmp_path) -> dict:
    """The pod spec of ``helm template`` with values-cpu.yaml and ``ports`` (HTTP, gRPC, metrics)."""
    helm = os.path.join(os.path.dirname(sys.executable), "helm")
    env = os.environ | {k: str(tmp_path / k.lower()) for k in ("HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME")}
    sets = ",".join(f"ports.{name}={port}" for name, port in zip(("http", "grpc", "metrics"), ports, strict=True))
    cmd = [helm, "template", "cascade", str(CHART_DIR), "-f", str(CHART_DIR / "values-cpu.yaml"), "--set", sets]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    deployment = next(d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]


def pod_of(container: dict, pod: dict, volumes: dict[str, str]) -> img.Pod:
    """The podman pod of a rendered container: its user, plain env values, command; ``volumes``."""
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    return img.Pod(user=user, env=env, volumes=volumes, entrypoint=container["command"])


@pytest.fixture(scope="module")
def repository(build_image, tmp_path_factory):
    pod = render(tuple(free_ports(3)), tmp_path_factory.mktemp("helm"))
    init = pod["initContainers"][0]
    assert init["image"] == build_image["image"], (init["image"], build_image["image"])
    report = REPO_DIR / "cpu" / "sst2" / "build_report.json"
    if report.is_file() and json.loads(report.read_text()).get("task_digest") == load_task("sst2").digest():
        refresh = "from cascade.repository.writer import refresh_backends as r; print(r('/models/cpu'))"
        podpy = img.Pod(volumes={str(REPO_DIR): "/models"}, entrypoint=["python", "-c"])
        seconds, out = podpy.run(build_image["image"], [refresh], timeout=120)
        FIGURES["repository"] = {"reused": True, "glue_refreshed": out.strip(), "seconds": round(seconds, 1)}
        return REPO_DIR
    shutil.rmtree(REPO_DIR, ignore_errors=True)
    REPO_DIR.mkdir(parents=True)
    os.chown(REPO_DIR, 1000, 1000)  # the PVC's owner: the pod's fsGroup
    command = list(init["command"])
    assert command[-1].endswith("--no-save"), command  # the build is the script's last command
    command[-1] += BUILD_ARGS
    build = pod_of(init, pod, {str(REPO_DIR): "/models"})
    build.entrypoint = command
    seconds, out = build.run(build_image["image"], [], timeout=3600)
    assert (REPO_DIR / "cpu" / "sst2" / "config.pbtxt").is_file(), out[-3000:]
    FIGURES["repository"] = {"reused": False, "init_command": command, "seconds": round(seconds, 1)}
    return REPO_DIR


@pytest.fixture(scope="module")
def rows():
    return load_split(load_task("sst2"), "validation", limit=ROWS)


def serve_and_classify(container: img.Container, rows) -> dict:
    try:
        ready = container.wait_ready(READY_TIMEOUT_S)
        return img.classify(container.grpc_url, "sst2", *rows) | {"seconds_to_ready": round(ready, 2)}
    finally:
        container.remove()


def check_answers(figures: dict) -> None:
    assert figures["rows_answered"] == ROWS, figures
    assert figures["degraded"] == 0, figures
    assert figures["accuracy"] >= MIN_ACCURACY, figures


def test_entrypoint_serves_sst2(built_image, repository, rows):
    ports = tuple(free_ports(3))
    args = ["--host", "127.0.0.1"]
    for name, port in zip(("--http-port", "--grpc-port", "--metrics-port"), ports, strict=True):
        args += [name, str(port)]
    pod = img.Pod(volumes={str(repository): "/models:ro"})
    FIGURES["entrypoint"] = figures = serve_and_classify(pod.start(built_image["image"], args, ports), rows)
    check_answers(figures)


def test_chart_command_serves_sst2(built_image, repository, rows, tmp_path):
    ports = tuple(free_ports(3))
    pod = render(ports, tmp_path)
    server = next(c for c in pod["containers"] if c["name"] == "tritonserver")
    assert "--model-repository=/models/cpu" in server["args"]
    run = pod_of(server, pod, {str(repository): "/models:ro"})
    container = run.start(built_image["image"], server["args"], ports)
    FIGURES["chart_command"] = figures = serve_and_classify(container, rows) | {"command": server["command"]}
    check_answers(figures)


def test_results_and_budgets(built_image, build_image):
    """Writes ``bench/results/image-*.json``; the serving image and the entrypoint's start within the budgets (the
    init container's image is recorded beside it)."""
    assert "entrypoint" in FIGURES, "the entrypoint run failed: nothing to record"
    payload = {
        "when": now_iso(),
        "command": "make test-image",
        "commit": commit(),
        "machine": img.machine_info(),
        "image": built_image,
        "build_image": build_image,
        "rows": ROWS,
        "runs": FIGURES,
        "budgets": img.budgets(built_image, FIGURES["entrypoint"]["seconds_to_ready"]),
    }
    path = save_result("image", payload)
    print(f"results: {path}")
    failed = {k: v for k, v in payload["budgets"].items() if not v["pass"]}
    assert not failed, f"budgets missed: {failed} ({path})"
