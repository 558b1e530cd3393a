"""``cascade bench gate``: what the gate costs over a direct tier call, at batch 1 and 64."""

from __future__ import annotations

import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from rich.console import Console
from rich.table import Table

from cascade import contract
from cascade.paths import RESULTS_DIR
from cascade.results import save_result
from cascade.tasks import TaskSpec, load_split

console = Console()


def _timed(fn, iterations: int, warmup: int = 20) -> dict:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    arr = np.array(samples)
    return {
        "iterations": iterations,
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
    }


def bench_gate(task: TaskSpec, repo: Path, iterations: int = 300, data_dir: str | None = None) -> dict:
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports
    from cascade_client import CascadeClient
    from cascade_export.build.repo_embedder import embed

    texts, _ = load_split(task, "validation", data_dir, limit=64)
    embeddings = embed(repo, texts)
    http, grpc, metrics = free_ports(3)
    opts = ServerOptions(repository=Path(repo), http_port=http, grpc_port=grpc, metrics_port=metrics)
    logreg = contract.tier_model_name(task.name, contract.TIER_LOGREG)
    cases = {}
    with TritonServer(opts) as server, CascadeClient(server.grpc_url) as client:
        for batch in (1, 64):
            t, e = texts[:batch], embeddings[:batch]
            tensor = grpcclient.InferInput(contract.EMBEDDING.name, list(e.shape), contract.EMBEDDING.datatype)
            tensor.set_data_from_numpy(e)
            cases[f"direct_logreg_embedding_b{batch}"] = _timed(lambda t=tensor: client.infer(logreg, [t]), iterations)
            cases[f"gate_tier0_embedding_b{batch}"] = _timed(
                lambda t=t, e=e: client.classify(task.name, t, e, max_tier=contract.TIER_LOGREG), iterations
            )
            # Text cases run the embedder (and the encoder): fewer iterations, the same percentiles.
            text_iterations = max(20, iterations // 10)
            cases[f"gate_tier0_text_b{batch}"] = _timed(
                lambda t=t: client.classify(task.name, t, max_tier=contract.TIER_LOGREG), text_iterations, warmup=5
            )
            cases[f"gate_cascade_text_b{batch}"] = _timed(
                lambda t=t: client.classify(task.name, t), text_iterations, warmup=5
            )
    overhead = {
        f"b{b}": cases[f"gate_tier0_embedding_b{b}"]["p50_ms"] - cases[f"direct_logreg_embedding_b{b}"]["p50_ms"]
        for b in (1, 64)
    }
    return {
        "benchmark": "gate",
        "task": task.name,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": _cpus(), "platform": platform.platform(), "python": platform.python_version()},
        "cases": cases,
        "gate_overhead_p50_ms": overhead,
        "note": "client and server share the machine's cores; gRPC over loopback",
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def save(result: dict, name: str, folder: Path = RESULTS_DIR) -> Path:
    return save_result(name, result, folder)


def print_gate(result: dict) -> None:
    table = Table(title=f"gate benchmark, task {result['task']} (ms per request over gRPC)")
    for column in ("case", "p50", "p99", "n"):
        table.add_column(column, justify="right")
    for name, row in result["cases"].items():
        table.add_row(name, f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}", str(row["iterations"]))
    console.print(table)
    for batch, ms in result["gate_overhead_p50_ms"].items():
        console.print(f"gate overhead over a direct tier-0 call at {batch}: {ms:+.2f} ms (p50)")
