"""The GPU check, run on the GPU machine by ``scripts/gpu_check.sh`` from what
``scripts/gpu_check_prepare.py`` left in ``.gpu-check/``. It needs torch with CUDA, numpy and the carried wheels
(nvidia-pytriton, array-api-compat, numpy 1.26); no tritonclient, protobuf or onnx: requests go over HTTP/JSON.

1. **The gate's math on the device.** ``cascade.gate.escalate.run_cascade`` over torch tensors on the GPU with the
logreg
   tier as torch ops (``cascade.runtime.onnx_runner.LinearModel``), timed with CUDA events at batch 1, 64 and 1,024 (the
   host copies of the outputs included), beside the same code on NumPy on this machine's CPU; the answers of
   the two must agree.
2. **The real server.** ``tritonserver`` from the wheel serves ``repo-gpu`` (the gate on a GPU instance,
   ``FORCE_CPU_ONLY_INPUT_TENSORS: no``; xgboost a BLS call whose input leaves the GPU by DLPack). The same
   1,024 rows at batch 1, 64 and 1,024 must get the answers the CPU profile gave on the CPU machine.

Writes ``gpu-<time>.json`` (the GPU named) into ``--out``; exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHECK = ROOT / ".gpu-check"
ITERATIONS, WARMUP = 200, 20


def environment() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info |= {
            "gpu": torch.cuda.get_device_name(0),
            "cuda": torch.version.cuda,
            "capability": torch.cuda.get_device_capability(0),
        }
    return info


class LinearTier:
    """The logreg tier as array-API ops in the batch's placement."""

    tier = 0

    def __init__(self, model, placement):
        self.model, self.placement = model, placement

    def predict_proba(self, batch, rows):
        return self.model.predict_proba(batch.embedding(rows), self.placement)


def device_gating(check: dict, rows: dict, device: str = "cuda:0") -> dict:
    """run_cascade on the GPU vs NumPy: equal answers, and the time per batch (CUDA events / perf_counter)."""
    import torch

    from cascade.gate.arrays import Placement, host
    from cascade.gate.config import GateConfig
    from cascade.gate.escalate import RowBatch, run_cascade
    from cascade.runtime.onnx_runner import LinearModel

    gate = GateConfig.from_parameters(check["gate_parameters"])
    model = LinearModel.load(CHECK / "repo-gpu" / "sst2_logreg" / "1")
    n_labels = len(gate.labels)
    out = {}
    for placement in (device, None):
        at = Placement(placement)
        tiers = [LinearTier(model, at)]
        for batch_size in check["batches"]:
            x = at.asarray(rows["embeddings"][:batch_size])
            lo, hi = at.full((batch_size,), 0), at.full((batch_size,), 0)  # held to tier 0: all on the device

            def once(x=x, at=at, tiers=tiers, lo=lo, hi=hi):
                batch = RowBatch(None, embeddings=x, placement=at)
                result = run_cascade(batch, tiers, gate.thresholds, n_labels, lo, hi)
                return host(result.probs), host(result.tier)  # the small outputs leave the device

            for _ in range(WARMUP):
                answer = once()
            samples = []
            for _ in range(ITERATIONS):
                if placement and placement.startswith("cuda"):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    once()
                    end.record()
                    torch.cuda.synchronize()
                    samples.append(start.elapsed_time(end))
                else:
                    t = time.perf_counter()
                    once()
                    samples.append((time.perf_counter() - t) * 1000)
            key = f"{'torch' if placement else 'numpy'}_b{batch_size}"
            out[key] = {
                "p50_ms": float(np.percentile(samples, 50)),
                "p99_ms": float(np.percentile(samples, 99)),
                "iterations": ITERATIONS,
                "probs": answer[0],
                "tier": answer[1],
            }
    agree = {}
    for batch_size in check["batches"]:
        gpu, cpu = out[f"torch_b{batch_size}"], out[f"numpy_b{batch_size}"]
        agree[batch_size] = bool(
            np.array_equal(gpu["tier"], cpu["tier"]) and np.allclose(gpu["probs"], cpu["probs"], atol=1e-5)
        )
    for value in out.values():
        del value["probs"], value["tier"]
    timer = "CUDA events (torch), perf_counter (NumPy)" if device.startswith("cuda") else "perf_counter"
    return {"device": device, "timing": out, "torch_equals_numpy": agree, "timer": timer}


def infer(url: str, task: str, embeddings: np.ndarray, max_tier: str) -> tuple[np.ndarray, np.ndarray]:
    body = {
        "inputs": [
            {
                "name": "EMBEDDING",
                "shape": list(embeddings.shape),
                "datatype": "FP32",
                "data": embeddings.reshape(-1).tolist(),
            }
        ],
        "outputs": [{"name": "PROBS"}, {"name": "TIER"}],
        "parameters": {"max_tier": max_tier},
    }
    request = urllib.request.Request(
        f"http://{url}/v2/models/{task}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            outputs = {o["name"]: o for o in json.load(response)["outputs"]}
    except urllib.error.HTTPError as exc:  # the server's message is in the body
        raise RuntimeError(f"HTTP {exc.code} at max_tier={max_tier}: {exc.read().decode(errors='replace')}") from None
    probs = np.array(outputs["PROBS"]["data"], np.float32).reshape(outputs["PROBS"]["shape"])
    return probs, np.array(outputs["TIER"]["data"], np.int32).reshape(-1)


def served(
    check: dict, rows: dict, out_dir: Path, dry_run: bool = False, tier_memory: str = "device", kind: str = "GPU"
) -> dict:
    """repo-gpu through the real tritonserver, against the CPU profile's answers, with the gate's tier calls in
    ``tier_memory`` (device: DLPack on the GPU; host: copies). ``dry_run``: a CPU machine checks this script
    itself, with the gate's GPU instance turned into a CPU one that gates on torch:cpu."""
    import shutil

    from cascade.server.launcher import ServerOptions, TritonServer, free_ports

    name = f"{tier_memory}-{kind.lower()}"
    repo = out_dir / f"repo-{name}"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(CHECK / "repo-gpu", repo)
    config = repo / check["task"] / "config.pbtxt"
    text, extra = config.read_text(), {"tier_memory": tier_memory}
    if dry_run:
        text, extra = text.replace("KIND_GPU", "KIND_CPU"), extra | {"placement": "torch:cpu"}
    elif kind == "CPU":  # a CPU instance that gates on the GPU: is it the instance kind, or the device tensors?
        text, extra = text.replace("KIND_GPU", "KIND_CPU"), extra | {"placement": "torch:cuda:0"}
    for key, value in extra.items():
        text += f'parameters {{\n  key: "{key}"\n  value {{\n    string_value: "{value}"\n  }}\n}}\n'
    config.write_text(text)
    http, grpc, metrics = free_ports(3)
    log = out_dir / f"gpu-check-server-{name}.log"
    opts = ServerOptions(
        repository=repo,
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        gpu=not dry_run,
        log_file=log,
    )
    result: dict = {"batches": {}}
    started = time.perf_counter()
    with TritonServer(opts):
        result["server_start_s"] = round(time.perf_counter() - started, 1)
        url = f"127.0.0.1:{http}"
        result |= where_models_ran(url)
        result["probes"] = {}
        for max_tier in ("logreg", check["max_tier"]):  # the inline tier alone, then the BLS call too
            try:
                infer(url, check["task"], rows["embeddings"][:4], max_tier)
                result["probes"][max_tier] = "ok"
            except Exception as exc:  # noqa: BLE001 - recorded, the batches below say the rest
                result["probes"][max_tier] = str(exc)
        try:
            result["batches"] = answers(url, check, rows)
        except Exception as exc:  # noqa: BLE001 - the probes above and the server's log say why
            result["error"] = f"{type(exc).__name__}: {exc}"
    text = log.read_text(errors="replace") if log.is_file() else ""
    result["gate_logged_gpu_placement"] = ("gating on cpu" if dry_run else "gating on cuda:") in text
    result["equal_to_cpu_profile"] = bool(result["batches"]) and all(
        b["tiers_equal"] and b["max_abs_prob_diff"] <= 1e-5 for b in result["batches"].values()
    )
    return result


def get_json(url: str, path: str, post: bool = False):
    """A JSON answer of Triton's HTTP API (``post``: an empty JSON body, as ``/v2/repository/index`` wants)."""
    request = urllib.request.Request(f"http://{url}{path}", data=b"{}" if post else None)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def where_models_ran(url: str) -> dict:
    """The server's Triton version, and for each loaded model its backend (or platform) and instance kinds, as
    the running server reports them (``/v2``, ``/v2/repository/index``, ``/v2/models/<name>/config``)."""
    try:
        models = {}
        for entry in get_json(url, "/v2/repository/index", post=True):
            if entry.get("state") != "READY":
                continue
            config = get_json(url, f"/v2/models/{entry['name']}/config")
            models[entry["name"]] = {
                "backend": config.get("backend") or config.get("platform"),
                "instances": sorted({g.get("kind", "") for g in config.get("instance_group", [])}),
                "accelerators": [
                    a.get("name")
                    for a in config.get("optimization", {})
                    .get("execution_accelerators", {})
                    .get("gpu_execution_accelerator", [])
                ],  # fmt: skip
            }
        return {"triton_version": get_json(url, "/v2").get("version"), "models": models}
    except Exception as exc:  # noqa: BLE001 - recorded; the answers below are the check
        return {"triton_version": None, "models": {"error": f"{type(exc).__name__}: {exc}"}}


def answers(url: str, check: dict, rows: dict) -> dict:
    """The served answers at each batch size, against the CPU profile's."""
    out = {}
    for batch_size in check["batches"]:
        n = check["rows"] if batch_size > 1 else 64
        probs, tiers, latencies = [], [], []
        for i in range(0, n, batch_size):
            t = time.perf_counter()
            p, tier = infer(url, check["task"], rows["embeddings"][i : i + batch_size], check["max_tier"])
            latencies.append((time.perf_counter() - t) * 1000)
            probs.append(p)
            tiers.append(tier)
        probs, tiers = np.concatenate(probs), np.concatenate(tiers)
        want_p, want_t = rows[f"probs_b{batch_size}"], rows[f"tier_b{batch_size}"]
        out[batch_size] = {
            "requests": len(latencies),
            "http_json_p50_ms": float(np.median(latencies)),
            "tiers_equal": bool(np.array_equal(tiers, want_t)),
            "max_abs_prob_diff": float(np.abs(probs - want_p).max()),
            "tier_counts": {int(k): int(v) for k, v in zip(*np.unique(tiers, return_counts=True), strict=True)},
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--dry-run-on-cpu", action="store_true", help="check this script on a CPU machine")
    args = parser.parse_args()
    device = "cpu" if args.dry_run_on_cpu else "cuda:0"
    args.out.mkdir(parents=True, exist_ok=True)
    check = json.loads((CHECK / "check.json").read_text())
    with np.load(CHECK / "rows.npz") as z:
        rows = {k: z[k] for k in z.files}
    env = environment()
    report = {
        "benchmark": "gpu-check",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": check.get("commit"),  # recorded by gpu_check_prepare.py: the device machine has no .git
        "device": env.get("gpu", "cpu (dry run)" if args.dry_run_on_cpu else None),
        "env": env,
    }
    failures = []
    for name, step in (
        ("device_gating", lambda: device_gating(check, rows, device)),
        ("served", lambda: served(check, rows, args.out, args.dry_run_on_cpu, "device")),
        ("served_host_memory", lambda: served(check, rows, args.out, args.dry_run_on_cpu, "host")),
        ("served_cpu_instance", lambda: served(check, rows, args.out, args.dry_run_on_cpu, "device", "CPU")),
    ):
        try:
            report[name] = step()
        except Exception as exc:  # noqa: BLE001 - a failed step is reported, the next one still runs
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
            failures.append(name)
    if "device_gating" not in failures and not all(report["device_gating"]["torch_equals_numpy"].values()):
        failures.append("device_gating: torch answers differ from NumPy's")
    for name in ("served", "served_host_memory", "served_cpu_instance"):
        if name not in failures:
            if not report[name]["equal_to_cpu_profile"]:
                failures.append(f"{name}: answers differ from the CPU profile's")
            if not report[name]["gate_logged_gpu_placement"]:
                failures.append(f"{name}: the gate did not gate on the GPU")
    report["triton_version"] = report["served"].get("triton_version")
    report["failures"] = failures
    report["passed"] = not failures
    report["dry_run_on_cpu"] = args.dry_run_on_cpu
    stem = "gpu-dry-run" if args.dry_run_on_cpu else "gpu"
    path = args.out / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    print(f"saved {path}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
