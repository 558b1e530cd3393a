"""Prepare the one-call GPU check on this CPU machine: everything ``scripts/gpu_check.sh`` needs
travels in two ignored folders, so the check runs on the GPU machine with no edits and no network.

- ``.gpu-check/``: a small SST-2 task (tiers logreg and xgboost, trained here on 1,000 rows) as two repositories,
  ``repo-cpu`` (the CPU profile) and ``repo-gpu`` (the same models, the gate on a GPU instance with
  ``FORCE_CPU_ONLY_INPUT_TENSORS: no``, logreg inline as torch ops); 1,024 held-out rows as embeddings with the
  CPU profile's answers to them, taken here from the real server at batch 1, 64 and 1,024; ``check.json``.
- ``.whl/``: the wheels the GPU machine lacks, for its Python 3.12: ``nvidia-pytriton`` (the tritonserver
  binary and the Python backend, slimmed to Python 3.12), ``array-api-compat`` and ``numpy`` 1.26 (the project's pin:
  Triton 2.51's stub miscomputes tensor sizes under the machine's NumPy 2).

The embedder, the encoder and the LLM tiers stay behind: the MiniLM ONNX file alone is larger than what a call
may carry (64 MiB), and llama.cpp is not installed there. The check sends precomputed embeddings.

Run: ``.venv/bin/python scripts/gpu_check_prepare.py``, then the device tool:
``run(command="bash scripts/gpu_check.sh", carry=[".whl", ".gpu-check"], timeout_s=540)``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cascade import contract  # noqa: E402
from cascade.results import commit  # noqa: E402

CHECK = ROOT / ".gpu-check"
WHEELS = ROOT / ".whl"
WORK = ROOT / "bench" / "work" / "gpu-check-build"
TASK = "sst2"
#: The quick embedder: the check sends precomputed embeddings, so only their width reaches the GPU.
EMBEDDER = "minilm-l6"
ROWS = 1024
BATCHES = (1, 64, 1024)
#: The GPU machine's Python and what it lacks (it has torch, onnxruntime, transformers, numpy).
DEVICE_PYTHON = "3.12"
#: numpy: the project's pin. The Python-backend stub of Triton 2.51 miscomputes the byte size of every tensor a
#: model makes under NumPy 2 (the GPU machine has 2.5): outputs then fail with "output tensor shape does not
#: match size of output" (found by this check; reproduced on CPU with NumPy 2.4).
DEVICE_WHEELS = ("nvidia-pytriton==0.7.0", "array-api-compat==1.16.0", "numpy==1.26.4")
#: What the wheel carries for other Pythons: dropped, so that the wheels fit the 64 MiB a call may carry.
SLIM_PREFIXES = ("nvidia_pytriton.libs/libpython3-", "pytriton/tritonserver/python_backend_stubs/")
MODELS = (
    TASK,
    contract.tier_model_name(TASK, contract.TIER_LOGREG),
    contract.tier_model_name(TASK, contract.TIER_XGBOOST),
)


def build(work: Path) -> Path:
    """A fresh logreg + xgboost SST-2 task (and the embedder, which stays here) under ``work``."""
    from cascade.tasks import load_task
    from cascade_export.build.commands import build_task
    from cascade_export.build.stage import BuildOptions

    task = replace(load_task(TASK), tiers=(contract.TIER_LOGREG, contract.TIER_XGBOOST), target=0.8)
    repo = work / "cpu"
    if not (repo / TASK / "config.pbtxt").is_file():
        build_task(
            task,
            repo,
            BuildOptions(train_rows=1000, calib_rows=1000, progress=True, keep_all_tiers=True, embedder=EMBEDDER),
        )
    return repo


def reference(repo_cpu: Path, embeddings: np.ndarray) -> dict[str, np.ndarray]:
    """The CPU profile's answers, from the real server, at each batch size the check sends."""
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports
    from cascade_client import CascadeClient

    http, grpc, metrics = free_ports(3)
    out = {}
    with TritonServer(ServerOptions(repository=repo_cpu, http_port=http, grpc_port=grpc, metrics_port=metrics)) as s:
        with CascadeClient(s.grpc_url) as client:
            for batch in BATCHES:
                parts = [
                    client.classify_arrays(TASK, None, embeddings[i : i + batch], max_tier="xgboost")
                    for i in range(0, ROWS if batch > 1 else 64, batch)
                ]
                out[f"probs_b{batch}"] = np.concatenate([p.probs for p in parts])
                out[f"tier_b{batch}"] = np.concatenate([p.tier for p in parts])
    return out


def write_gpu_repo(repo_cpu: Path, repo_gpu: Path) -> dict:
    """``repo_cpu`` with the gate on a GPU instance (cascade.repository.gpu_profile.gate_gpu_config); returns its
    parameters."""
    from cascade.repository.configgen import parse_config
    from cascade.repository.gpu_profile import gate_gpu_config

    shutil.rmtree(repo_gpu, ignore_errors=True)
    shutil.copytree(repo_cpu, repo_gpu)
    config_path = repo_gpu / TASK / "config.pbtxt"
    gate = gate_gpu_config(parse_config(config_path.read_text()))
    from google.protobuf import text_format

    config_path.write_text(text_format.MessageToString(gate))
    return {k: v.string_value for k, v in gate.parameters.items()}


def slim_pytriton(wheel: Path) -> None:
    """The pytriton wheel without the libraries and stubs of Pythons other than the device's (RECORD to match)."""
    import zipfile

    keep_stub = f"python_backend_stubs/{DEVICE_PYTHON}/"
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {
            i.filename for i in src.infolist() if i.filename.startswith(SLIM_PREFIXES) and keep_stub not in i.filename
        }
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = "\n".join(line for line in lines if line.split(",")[0] not in dropped).encode() + b"\n"
            dst.writestr(info, data)
    slim.replace(wheel)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-wheels", action="store_true", help="keep .whl/ as it is")
    args = parser.parse_args()
    start = time.perf_counter()
    built = build(WORK)
    shutil.rmtree(CHECK, ignore_errors=True)
    repo_cpu = CHECK / "repo-cpu"
    for name in MODELS:
        shutil.copytree(built / name, repo_cpu / name, ignore=shutil.ignore_patterns("__pycache__"))
    from cascade.tasks import load_split, load_task
    from cascade_export.build.repo_embedder import embed

    texts, gold = load_split(load_task(TASK), "validation", limit=ROWS)
    texts = (texts * (ROWS // len(texts) + 1))[:ROWS]  # SST-2 validation has 872 rows: wrap around
    embeddings = embed(built, texts).astype(np.float32)
    ref = reference(repo_cpu, embeddings)
    gate_parameters = write_gpu_repo(repo_cpu, CHECK / "repo-gpu")
    np.savez(CHECK / "rows.npz", embeddings=embeddings, **ref)
    (CHECK / "check.json").write_text(
        json.dumps(
            {
                "task": TASK,
                "rows": ROWS,
                "batches": BATCHES,
                "max_tier": "xgboost",
                "gate_parameters": gate_parameters,
                "commit": commit(),
            },  # the device machine has no .git: the checked commit is this one
            indent=2,
        )
    )
    if not args.skip_wheels:
        shutil.rmtree(WHEELS, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--python-version", DEVICE_PYTHON, "-d", str(WHEELS), *DEVICE_WHEELS],
            check=True,
        )  # fmt: skip
        slim_pytriton(next(WHEELS.glob("nvidia_pytriton-*.whl")))
    size = sum(p.stat().st_size for d in (CHECK, WHEELS) for p in d.rglob("*") if p.is_file())
    took = time.perf_counter() - start
    print(f"prepared {CHECK.name}/ and {WHEELS.name}/ ({size / 2**20:.1f} MiB to carry) in {took:.0f} s")
    print('device tool: run(command="bash scripts/gpu_check.sh", carry=[".whl", ".gpu-check"], timeout_s=540)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
