"""``cascade soak`` / ``make soak``: a bounded soak test. Mixed traffic against a server this command starts,
while a sampler records the server's memory, its stub processes and ``/dev/shm`` every few seconds.

The traffic, one thread per kind, each as fast as answers come:

- ``easy``: 1-64 rows of precomputed embeddings held to tier 0 (the interactive hot path);
- ``text``: 1-8 dataset texts through the whole cascade (embedder, every enabled tier, the LLMs);
- ``table``: 4,096 rows of embeddings per request (the table job's requests);
- ``bad``: requests the server must refuse with INVALID_ARG (NaN embeddings, invalid UTF-8, empty text,
  wrong dimension, unknown parameter), so the error paths are soaked too;
- ``scrape``: the metrics endpoint and model statistics every 5 s, as Prometheus and Grafana would.

Judged at the end: no unexpected error; the same stub processes and shared-memory regions; ``/dev/shm`` not
growing in the last third of the run (the regions grow to a high-water mark and never shrink); server and
stub memory within ``growth`` of what they were after the warm-up (the first ``warmup_s`` load the models'
caches and ONNX Runtime's arenas), comparing the median of the first and of the last fifth of the samples.
Results are printed and saved as JSON.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cascade import contract
from cascade.server.shm import SHM_DIR, SHM_PREFIX

KINDS = ("easy", "text", "table", "bad", "scrape")
SAMPLE_EVERY_S = 5.0
#: The server's RSS climbs for its first 4-5 minutes under this load (three runs, 2026-11-29) before it levels off.
DEFAULT_WARMUP_S = 300
#: Allowed growth of server and stub memory from the end of the warm-up to the end of the run.
DEFAULT_GROWTH = 0.10
#: Below this many MiB, growth is noise (allocator arenas), whatever the ratio.
GROWTH_FLOOR_MB = 32.0


@dataclass
class Sample:
    t_s: float
    server_rss_mb: float
    stub_rss_mb: float
    stubs: int
    shm_files: int
    shm_mb: float
    server_fds: int
    server_threads: int


def _status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _rss_mb(pid: int) -> float:
    return int(_status(pid)["VmRSS"].split()[0]) / 1024


def stubs(server_pid: int) -> dict[int, str]:
    """The server's Python-backend stub processes (its children running ``triton_python_backend_stub``): pid ->
    the model each serves (the stub's command line names the model's ``<model>/<version>/model.py``)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == server_pid and argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 1:
            found[int(entry)] = Path(os.fsdecode(argv[1])).parent.parent.name
    return found


def _mapped_regions(pids: list[int]) -> set[str]:
    """The Python-backend shared-memory regions these processes map (another server's regions are not ours)."""
    names = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    if SHM_PREFIX in line:
                        names.add(SHM_PREFIX + line.split(SHM_PREFIX, 1)[1].split()[0])
        except OSError:
            continue
    return names


def sample(server_pid: int, t_s: float) -> Sample:
    pids = sorted(stubs(server_pid))
    stub_rss = 0.0
    for pid in pids:
        try:
            stub_rss += _rss_mb(pid)
        except OSError:
            pass
    regions = [SHM_DIR / name for name in _mapped_regions([server_pid, *pids])]
    shm_bytes = 0
    for region in regions:
        try:
            shm_bytes += region.stat().st_blocks * 512
        except OSError:
            pass
    status = _status(server_pid)
    return Sample(
        t_s=round(t_s, 1),
        server_rss_mb=round(int(status["VmRSS"].split()[0]) / 1024, 1),
        stub_rss_mb=round(stub_rss, 1),
        stubs=len(pids),
        shm_files=len(regions),
        shm_mb=round(shm_bytes / 2**20, 1),
        server_fds=len(os.listdir(f"/proc/{server_pid}/fd")),
        server_threads=int(status["Threads"]),
    )


class Traffic:
    """The mixed traffic: one thread per kind until ``stop`` is set; counts requests, rows and errors."""

    def __init__(self, url: str, task: str, texts: list[str], embeddings: np.ndarray, metrics_url: str | None):
        self.url, self.task, self.texts, self.embeddings = url, task, texts, embeddings
        self.metrics_url = metrics_url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.requests: Counter = Counter()
        self.rows: Counter = Counter()
        self.refused: Counter = Counter()  # bad requests answered INVALID_ARG, as they should be
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(kind,), daemon=True) for kind in KINDS]

    def _count(self, kind: str, rows: int) -> None:
        with self.lock:
            self.requests[kind] += 1
            self.rows[kind] += rows

    def _error(self, kind: str, exc: Exception) -> None:
        with self.lock:
            self.errors.append(f"{kind}: {exc}")

    def _run(self, kind: str) -> None:
        from cascade_client import CascadeClient

        rng = np.random.default_rng(KINDS.index(kind))
        with CascadeClient(self.url, timeout_s=120) as client:
            while not self.stop.is_set():
                try:
                    getattr(self, f"_{kind}")(client, rng)
                except Exception as exc:  # noqa: BLE001 - every unexpected error is reported and fails the soak
                    self._error(kind, exc)
                    time.sleep(0.5)

    def _easy(self, client, rng) -> None:
        n = int(rng.integers(1, 65))
        rows = rng.integers(0, len(self.embeddings), n)
        client.classify_arrays(self.task, None, self.embeddings[rows], max_tier="logreg")
        self._count("easy", n)

    def _text(self, client, rng) -> None:
        n = int(rng.integers(1, 9))
        rows = rng.integers(0, len(self.texts), n)
        client.classify(self.task, [self.texts[i] for i in rows])
        self._count("text", n)

    def _table(self, client, rng) -> None:
        rows = rng.integers(0, len(self.embeddings), contract.GATE_MAX_BATCH_SIZE)
        client.classify_arrays(self.task, None, self.embeddings[rows], max_tier="logreg")
        self._count("table", len(rows))

    def _bad(self, client, rng) -> None:
        from cascade.errors import InvalidInput
        from cascade_client.grpc_client import text_inputs

        case = int(rng.integers(0, 5))
        emb = self.embeddings[:2].copy()
        try:
            if case == 0:
                emb[1, 3] = np.nan
                client.classify_arrays(self.task, None, emb, max_tier="logreg")
            elif case == 1:
                client.classify(self.task, [b"\xff\xfe not utf-8", "fine"])
            elif case == 2:
                client.classify(self.task, ["  "])
            elif case == 3:
                client.classify_arrays(self.task, None, emb[:, :100], max_tier="logreg")
            else:
                client.infer(self.task, text_inputs(["a film"]), parameters={"temperature": 1})
        except InvalidInput:
            with self.lock:
                self.refused[case] += 1
            self._count("bad", 0)
            return
        raise AssertionError(f"bad request {case} was answered instead of refused")

    def _scrape(self, client, rng) -> None:
        if self.metrics_url:
            with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
                response.read()
        client.model_stats()
        self._count("scrape", 0)
        self.stop.wait(5)

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=180)
        hung = [t.name for t in self.threads if t.is_alive()]
        if hung:
            self.errors.append(f"{len(hung)} traffic thread(s) still waiting for an answer 180 s after the end")


def memory_medians(steady: list[Sample]) -> dict[str, tuple[float, float]]:
    """Server and stub RSS: the median of the first fifth of the steady samples and of the last fifth (RSS
    swings by tens of MB from one sample to the next with the request buffers in flight)."""
    k = max(1, len(steady) // 5)
    return {
        name: tuple(float(np.median([getattr(s, name) for s in part])) for part in (steady[:k], steady[-k:]))
        for name in ("server_rss_mb", "stub_rss_mb")
    }


def judge(samples: list[Sample], warmup_s: float, growth: float, errors: list[str]) -> list[str]:
    """What broke: errors, stub processes or shared memory that changed, memory that grew past ``growth``."""
    problems = [f"{len(errors)} unexpected errors, first: {errors[0]}"] if errors else []
    steady = [s for s in samples if s.t_s >= warmup_s] or samples[-1:]
    first, last = steady[0], steady[-1]
    if len({s.stubs for s in steady}) > 1:
        problems.append(f"stub processes changed: {sorted({s.stubs for s in steady})}")
    if len({s.shm_files for s in steady}) > 1:
        problems.append(f"/dev/shm regions changed: {sorted({s.shm_files for s in steady})} files")
    # The Python backend grows a stub's region in steps when bigger tensors are in flight at once and never
    # shrinks it: a high-water mark. It may still rise in the first two thirds of the run, not in the last.
    final = [s for s in steady if s.t_s >= first.t_s + (last.t_s - first.t_s) * 2 / 3] or [last]
    if final[-1].shm_mb > final[0].shm_mb:
        problems.append(
            f"/dev/shm still growing in the last third: {final[0].shm_mb} -> {final[-1].shm_mb} MB "
            f"({first.shm_mb} MB after the warm-up)"
        )
    for name, (before, after) in memory_medians(steady).items():
        if after - before > max(growth * before, GROWTH_FLOOR_MB):
            problems.append(f"{name} grew {before} -> {after} MB (more than {growth:.0%} and {GROWTH_FLOOR_MB} MB)")
    return problems


def run_soak(
    task,
    repo: Path,
    duration_s: float = 600,
    warmup_s: float = DEFAULT_WARMUP_S,
    growth: float = DEFAULT_GROWTH,
    data_dir: str | None = None,
    log=None,
) -> dict:
    """Start a server on ``repo``, run the mixed traffic for ``duration_s``, sample, judge; returns the report."""
    log = log or functools.partial(print, flush=True)
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports
    from cascade.tasks import load_split
    from cascade_client import CascadeClient

    http, grpc, metrics = free_ports(3)
    opts = ServerOptions(repository=Path(repo), http_port=http, grpc_port=grpc, metrics_port=metrics)
    texts, _ = load_split(task, "validation", data_dir, limit=400)
    with TritonServer(opts) as server:
        with CascadeClient(server.grpc_url) as client:
            emb = client.embed(texts)
        samples: list[Sample] = []
        start = time.monotonic()
        with Traffic(server.grpc_url, task.name, texts, emb, server.metrics_url) as traffic:
            while (elapsed := time.monotonic() - start) < duration_s:
                samples.append(sample(server.pid, elapsed))
                s = samples[-1]
                log(
                    f"[soak {elapsed:5.0f}s] server {s.server_rss_mb} MB, {s.stubs} stubs {s.stub_rss_mb} MB, "
                    f"/dev/shm {s.shm_files} files {s.shm_mb} MB, requests {dict(traffic.requests)}, "
                    f"errors {len(traffic.errors)}"
                )
                traffic.stop.wait(min(SAMPLE_EVERY_S, max(duration_s - elapsed, 0)))
        samples.append(sample(server.pid, time.monotonic() - start))
    problems = judge(samples, warmup_s, growth, traffic.errors)
    steady = [s for s in samples if s.t_s >= warmup_s] or samples[-1:]
    return {
        "benchmark": "soak",
        "task": task.name,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "growth_allowed": growth,
        "requests": dict(traffic.requests),
        "rows": dict(traffic.rows),
        "bad_requests_refused": sum(traffic.refused.values()),
        "errors": traffic.errors[:20],
        "error_count": len(traffic.errors),
        "after_warmup": vars(steady[0]),
        "end": vars(samples[-1]),
        "rss_medians_mb": {
            name: {"first_fifth": a, "last_fifth": b} for name, (a, b) in memory_medians(steady).items()
        },
        "peak_server_rss_mb": max(s.server_rss_mb for s in samples),
        "samples": [vars(s) for s in samples],
        "problems": problems,
        "passed": not problems,
    }
