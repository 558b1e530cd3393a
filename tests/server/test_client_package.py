"""The client package stands alone: installed into a fresh venv from the wheelhouse `make setup` fills (no registry),
it pulls tritonclient and NumPy and nothing of the project's weight (no torch, llama.cpp, ONNX Runtime, weights),
and classifies against a real server."""

import json
import subprocess
import sys
import time

import pytest

from cascade.paths import CHECKOUT

pytestmark = pytest.mark.server

WHEELHOUSE = CHECKOUT / ".wheelhouse" / "client"
#: What the client may pull (pip's own tools aside): its pins and their dependencies.
ALLOWED = {
    "cascade-client",
    "tritonclient",
    "numpy",
    "grpcio",
    "protobuf",
    "python-rapidjson",
    "urllib3",
    "ml-dtypes",
    "packaging",
    "typing-extensions",
}
HEAVY = {"torch", "llama-cpp-python", "onnxruntime", "onnx", "transformers", "xgboost", "scikit-learn"}

CLASSIFY = """
import json, sys
import cascade_client
from cascade_client import CascadeClient
try:
    import cascade
except ImportError:
    project = None
else:
    project = cascade.__file__
with CascadeClient(sys.argv[1]) as client:
    answers = client.classify(sys.argv[2], ["a gorgeous, witty, moving film", "a dull, lifeless mess"])
    info = client.task_info(sys.argv[2])
print(json.dumps({
    "module": cascade_client.__file__, "project": project, "labels": list(info.labels),
    "answers": [[p.label, p.tier_name, p.confidence] for p in answers],
}))
"""


def run(*cmd, cwd) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_client_installs_alone_and_classifies(server, sst2_task, tmp_path):
    assert WHEELHOUSE.is_dir() and any(WHEELHOUSE.glob("tritonclient-*.whl")), (
        f"{WHEELHOUSE} lacks the client's dependencies: run `make setup`"
    )
    start = time.monotonic()
    # The client's own wheel from this checkout; its dependencies from the wheelhouse, never from a registry.
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        tmp_path / "own",
        CHECKOUT / "client",
        cwd=tmp_path,
    )
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--find-links",
        WHEELHOUSE,
        "--find-links",
        tmp_path / "own",
        "cascade-client",
        cwd=tmp_path,
    )
    install_s = time.monotonic() - start

    listed = json.loads(run(python, "-m", "pip", "list", "--format", "json", cwd=tmp_path))
    pulled = {d["name"].lower().replace("_", "-") for d in listed}
    pulled -= {"pip", "setuptools", "wheel"}
    assert not pulled & HEAVY and pulled <= ALLOWED, sorted(pulled)
    assert {"cascade-client", "tritonclient", "numpy", "grpcio"} <= pulled
    assert install_s < 60, f"the client took {install_s:.0f} s to install alone"

    # -I: the checkout (the current directory, PYTHONPATH) is not on the path; only the venv's packages are.
    out = json.loads(run(python, "-I", "-c", CLASSIFY, server.grpc_url, sst2_task.name, cwd=tmp_path))
    assert out["project"] is None and out["module"].startswith(str(venv))
    assert out["labels"] == list(sst2_task.labels)
    assert [label for label, _, _ in out["answers"]] == ["positive", "negative"]
    assert all(0.5 <= conf <= 1.0 for _, _, conf in out["answers"])
