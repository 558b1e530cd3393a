"""``cascade bench isolation``: do easy rows stay fast while the LLM is busy, and does a busy machine fail requests?

Four phases against one real server, each ``duration`` seconds:

- ``alone``: one easy client (1 row with its precomputed EMBEDDING, ``max_tier=logreg``), back to back;
- ``llm_load``: the same easy client while ``llm_clients`` clients keep ``llm_large`` saturated with 4-row
  ``min_tier=llm_large`` requests;
- ``alone_busy`` and ``llm_load_busy``: the same with one core kept busy by another process (``cascade.bench.busy``).

Targets, judged here and saved with the numbers: easy p99 under LLM load <= 3x its p99 alone (a ratio, no floor),
on the idle machine and on the busy one; 0 failed requests in every phase. JSON in ``bench/results/``.
"""

from __future__ import annotations

import platform
import threading
import time
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cascade import contract
from cascade.bench.busy import cpu_hog
from cascade.runtime.sizing import llm_threads, server_cores

#: Requests the LLM clients send (short reviews: the bench needs no dataset).
LLM_TEXTS = [
    "a gripping, beautifully shot film",
    "the plot drags and the jokes fall flat",
    "not the best, but the cast is charming",
    "an overlong mess with a few good scenes",
]
EASY_TEXT = "a warm and funny film"
P99_FACTOR = 3.0


class Loop(threading.Thread):
    """One client sending the same request back to back until stopped."""

    def __init__(self, url: str, send) -> None:
        super().__init__(daemon=True)
        self.url, self.send = url, send
        self.stop = threading.Event()
        self.latencies_ms: list[float] = []
        self.errors: list[str] = []
        self.degraded = 0
        self.rows = 0

    def run(self) -> None:
        from cascade_client import CascadeClient

        with CascadeClient(self.url) as client:
            while not self.stop.is_set():
                start = time.perf_counter()
                try:
                    answers = self.send(client)
                except Exception as exc:  # noqa: BLE001 - counted as a failed request
                    self.errors.append(str(exc)[:300])
                    continue
                self.latencies_ms.append((time.perf_counter() - start) * 1000)
                self.rows += len(answers)
                self.degraded += sum(a.degraded for a in answers)


def _stats(loops: list[Loop], seconds: float) -> dict:
    lat = np.array([x for loop in loops for x in loop.latencies_ms])
    return {
        "requests": int(lat.size),
        "failed": sum(len(loop.errors) for loop in loops),
        "first_errors": [e for loop in loops for e in loop.errors][:3],
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "max_ms": float(lat.max()) if lat.size else None,
        "rows": sum(loop.rows for loop in loops),
        "rows_per_s": sum(loop.rows for loop in loops) / seconds,
        "degraded_rows": sum(loop.degraded for loop in loops),
    }


def phase(url: str, task: str, embedding: np.ndarray, duration_s: float, llm_clients: int, busy: bool) -> dict:
    def easy(client):
        return client.classify(task, None, embedding, max_tier=contract.TIER_NAMES[contract.TIER_LOGREG])

    def llm(client):
        return client.classify(task, LLM_TEXTS, min_tier=contract.TIER_NAMES[contract.TIER_LLM_LARGE])

    with cpu_hog() if busy else nullcontext():
        slow = [Loop(url, llm) for _ in range(llm_clients)]
        for loop in slow:
            loop.start()
        time.sleep(2.0 if llm_clients else 0.0)  # the LLM lane is saturated from here on
        fast = Loop(url, easy)
        start = time.perf_counter()
        fast.start()
        time.sleep(duration_s)
        for loop in (fast, *slow):
            loop.stop.set()
        for loop in (fast, *slow):
            loop.join(timeout=300)
        seconds = time.perf_counter() - start
    out = {"busy_core": busy, "llm_clients": llm_clients, "seconds": seconds, "easy": _stats([fast], seconds)}
    if slow:
        out["llm"] = _stats(slow, seconds)
    return out


def judge(phases: dict) -> list[str]:
    """The targets this run missed (empty: passed)."""
    breaches = []
    for alone, loaded in (("alone", "llm_load"), ("alone_busy", "llm_load_busy")):
        limit = P99_FACTOR * phases[alone]["easy"]["p99_ms"]
        got = phases[loaded]["easy"]["p99_ms"]
        if got is None or got > limit:
            breaches.append(f"{loaded}: easy p99 {got} ms > {limit:.1f} ms ({P99_FACTOR:g}x {alone} p99)")
    for name, result in phases.items():
        failed = result["easy"]["failed"] + result.get("llm", {}).get("failed", 0)
        if failed:
            breaches.append(f"{name}: {failed} failed request(s)")
    return breaches


def bench_isolation(task: str, repo: Path, duration_s: float = 20.0, llm_clients: int = 3) -> dict:
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports
    from cascade_client import CascadeClient

    http, grpc, metrics = free_ports(3)
    opts = ServerOptions(repository=Path(repo), http_port=http, grpc_port=grpc, metrics_port=metrics)
    phases = {}
    with TritonServer(opts) as server:
        with CascadeClient(server.grpc_url) as client:
            embedding = client.embed([EASY_TEXT])
            client.classify(task, LLM_TEXTS, min_tier="llm_large")  # warm up
        for name, clients, busy in (
            ("alone", 0, False),
            ("llm_load", llm_clients, False),
            ("alone_busy", 0, True),
            ("llm_load_busy", llm_clients, True),
        ):
            phases[name] = phase(server.grpc_url, task, embedding, duration_s, clients, busy)
            print_phase(name, phases[name])
    breaches = judge(phases)
    return {
        "benchmark": "isolation",
        "task": task,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": server_cores(), "llm_threads": llm_threads(), "platform": platform.platform()},
        "duration_s": duration_s,
        "targets": {"easy_p99_factor": P99_FACTOR, "failed_requests": 0},
        "phases": phases,
        "breaches": breaches,
        "passed": not breaches,
        "note": "client and server share the machine's cores; easy = 1 row with EMBEDDING, max_tier=logreg; "
        f"llm = {len(LLM_TEXTS)} rows, min_tier=llm_large; busy = one child process spinning `while True: pass`",
    }


def print_phase(name: str, result: dict) -> None:
    e = result["easy"]
    line = f"{name:14s} easy p50 {e['p50_ms']:.2f} ms, p99 {e['p99_ms']:.2f} ms, max {e['max_ms']:.1f} ms"
    line += f", {e['requests']} requests, {e['failed']} failed"
    if "llm" in result:
        m = result["llm"]
        line += f" | llm {m['rows_per_s']:.1f} rows/s, p50 {m['p50_ms']:.0f} ms, {m['failed']} failed"
        line += f", {m['degraded_rows']} degraded"
    print(line, flush=True)
