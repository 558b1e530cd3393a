"""Load tests: scenarios and their latency budgets (defined here, once), the data they send, and
``cascade loadtest SCENARIO``, which starts a server when no ``--url`` is given, runs Locust headless
with ``loadtest/locustfile.py``, and judges the result against the budgets.

No gevent here: the Locust user in ``loadtest/locustfile.py`` imports this module for the scenario and
budget definitions only after ``grpc.experimental.gevent.init_gevent()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cascade import contract
from cascade.errors import ConfigError
from cascade.paths import BENCH_WORK_DIR, LOCUSTFILE

#: Environment of the Locust process: where the scenario's rows are, which scenario, which task.
ENV_SCENARIO, ENV_DATA, ENV_TASK, ENV_RESULT, ENV_BUDGET_SCALE, ENV_SEARCH = (
    "CASCADE_LT_SCENARIO",
    "CASCADE_LT_DATA",
    "CASCADE_LT_TASK",
    "CASCADE_LT_RESULT",
    "CASCADE_LT_BUDGET_SCALE",
    "CASCADE_LT_SEARCH",
)


@dataclass(frozen=True)
class Budget:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_failure_ratio: float = 0.0

    def scaled(self, factor: float) -> Budget:
        return Budget(self.p50_ms * factor, self.p95_ms * factor, self.p99_ms * factor, self.max_failure_ratio)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    #: Which rows: "easy" (tier 0 answers them), "mix" (the dataset as it comes), "hard" (rows the
    #: cascade sends to an LLM tier).
    rows: str
    send_text: bool
    send_embedding: bool
    max_tier: str | None
    budget: Budget
    users: int
    #: Requests per second per user (Locust ``constant_throughput``); 0: as fast as answers come.
    rps_per_user: float
    #: Step load: (users, seconds) steps (``step`` only).
    steps: tuple[tuple[int, int], ...] = ()
    #: The steps ``--find-max`` climbs to find the highest rps within the budget.
    search: tuple[tuple[int, int], ...] = ()

    def load_steps(self, find_max: bool) -> tuple[tuple[int, int], ...]:
        return self.steps or (self.search if find_max else ())


#: The scenarios and their budgets: one request = one row, as an interactive client sends them. Budgets are
#: for this CPU profile: a row that needs the large tier costs 130-200 ms of llama.cpp on 2 cores (README,
#: "LLM tiers"), so the scenarios whose rows escalate are budgeted in hundreds of milliseconds.
SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "easy", "precomputed embeddings, kept on tier 0 (no text on the wire)", "easy",
            send_text=False, send_embedding=True, max_tier="logreg",
            budget=Budget(p50_ms=5, p95_ms=10, p99_ms=20), users=10, rps_per_user=100,
            search=((2, 10), (5, 10), (10, 10), (15, 10), (20, 10)),
        ),
        Scenario(
            "embedding", "precomputed embeddings with text: the full cascade, natural escalation", "mix",
            send_text=True, send_embedding=True, max_tier=None,
            budget=Budget(p50_ms=400, p95_ms=1500, p99_ms=3000), users=4, rps_per_user=2,
            search=((1, 15), (2, 15), (4, 15), (6, 15)),
        ),
        Scenario(
            "mix", "dataset texts: the embedder in the loop, natural escalation", "mix",
            send_text=True, send_embedding=False, max_tier=None,
            budget=Budget(p50_ms=500, p95_ms=1500, p99_ms=3000), users=4, rps_per_user=2,
            search=((1, 15), (2, 15), (4, 15), (6, 15)),
        ),
        Scenario(
            "hard", "texts the cascade sends to an LLM tier", "hard",
            send_text=True, send_embedding=False, max_tier=None,
            budget=Budget(p50_ms=1000, p95_ms=3000, p99_ms=5000), users=2, rps_per_user=1,
            search=((1, 15), (2, 15), (4, 15), (8, 15)),
        ),
        Scenario(
            "step", "easy traffic in steps of users: where does the budget break?", "easy",
            send_text=False, send_embedding=True, max_tier="logreg",
            budget=Budget(p50_ms=5, p95_ms=10, p99_ms=20), users=0, rps_per_user=100,
            steps=((2, 10), (5, 10), (10, 10), (15, 10), (20, 10)),
        ),
    )
}  # fmt: skip


def scenario(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise ConfigError(f"unknown scenario {name!r}; scenarios: {', '.join(SCENARIOS)}")
    return SCENARIOS[name]


# ------------------------------------------------------------------------------------------- judging
def percentiles_ms(stats_entry) -> dict[str, float]:
    """p50/p95/p99 (ms) of a Locust ``StatsEntry``."""
    return {f"p{int(q * 100)}_ms": float(stats_entry.get_response_time_percentile(q) or 0.0) for q in (0.5, 0.95, 0.99)}


def breaches(measured: dict, budget: Budget) -> list[str]:
    """Every budget the run broke, as a sentence."""
    out = []
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        if measured[key] > getattr(budget, key):
            out.append(f"{key[:-3]} {measured[key]:.1f} ms > budget {getattr(budget, key):g} ms")
    if measured["failure_ratio"] > budget.max_failure_ratio:
        out.append(f"failure ratio {measured['failure_ratio']:.4f} > budget {budget.max_failure_ratio:g}")
    if measured["requests"] == 0:
        out.append("no request completed")
    return out


# ---------------------------------------------------------------------------------------------- data
#: Held-out rows the scenarios draw from, and how many go to the server per call while they are sorted: a call
#: of a few rows stays well inside the client's deadline even when most of them need the LLM on a slow machine.
DEFAULT_ROWS, PREPARE_BATCH = 400, 16


def prepare_rows(
    task, url: str, out_dir: Path, data_dir: str | None = None, limit: int = DEFAULT_ROWS
) -> dict[str, Path]:
    """``easy``, ``mix`` and ``hard`` rows (text + embedding) as ``.npz`` files, from the task's held-out
    split through the running server: easy = answered at tier 0, hard = answered at an LLM tier."""
    from cascade.tasks import load_split
    from cascade_client import CascadeClient

    out_dir.mkdir(parents=True, exist_ok=True)
    texts, _ = load_split(task, "validation", data_dir, limit=limit)
    with CascadeClient(url) as client:
        emb = client.embed(texts)
        tiers = np.concatenate(
            [
                client.classify_arrays(task.name, texts[i : i + PREPARE_BATCH], emb[i : i + PREPARE_BATCH]).tier
                for i in range(0, len(texts), PREPARE_BATCH)
            ]
        )
    groups = {
        "mix": np.arange(len(texts)),
        "easy": np.flatnonzero(tiers == contract.TIER_LOGREG),
        "hard": np.flatnonzero(np.isin(tiers, list(contract.LLM_TIERS))),
    }
    paths = {}
    for name, rows in groups.items():
        if rows.size == 0:
            raise ConfigError(f"task {task.name}: no held-out row is {name} (tiers seen: {sorted(set(tiers))})")
        path = out_dir / f"{task.name}-{name}.npz"
        np.savez(path, text=np.array([texts[i] for i in rows], dtype=object), embedding=emb[rows])
        paths[name] = path
    return paths


# ---------------------------------------------------------------------------------------------- runner
def server_view(url: str, model: str):
    """Triton's own counters for ``model`` (``/v2/models/<m>/stats``): rows, executions, queue time."""
    from cascade_client import CascadeClient, ModelStats

    with CascadeClient(url) as client:
        return client.model_stats().get(model, ModelStats())


def run_locust(
    scenario_name: str,
    task: str,
    url: str,
    data: Path,
    result_path: Path,
    duration_s: int,
    users: int | None = None,
    budget_scale: float = 1.0,
    find_max: bool = False,
) -> tuple[int, dict]:
    """Locust headless against ``url``; returns (exit code, the result JSON the locustfile wrote)."""
    sc = scenario(scenario_name)
    n_users = users if users is not None else max(sc.users, 1)
    env = dict(
        os.environ,
        **{
            ENV_SCENARIO: sc.name,
            ENV_DATA: str(data),
            ENV_TASK: task,
            ENV_RESULT: str(result_path),
            ENV_BUDGET_SCALE: str(budget_scale),
            ENV_SEARCH: "1" if find_max else "",
        },
    )
    before = server_view(url, contract.gate_model_name(task))
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", f"grpc://{url}",
        "--only-summary", "--stop-timeout", "5",
    ]  # fmt: skip
    steps = sc.load_steps(find_max)
    if not steps:
        cmd += ["-u", str(n_users), "-r", str(n_users), "-t", f"{duration_s}s"]
    budget_s = sum(seconds for _, seconds in steps) if steps else duration_s
    run = subprocess.run(cmd, env=env, timeout=budget_s + 120, capture_output=True, text=True)
    if not result_path.is_file():
        raise ConfigError(f"locust wrote no result ({run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
    result = json.loads(result_path.read_text())
    delta = server_view(url, contract.gate_model_name(task)) - before
    if delta.executions:
        result["server"] = {
            "rows": delta.rows,
            "executions": delta.executions,
            "mean_batch_rows": delta.rows / delta.executions,
            "mean_queue_ms": 1000 * delta.queue_s / delta.executions,
            "mean_compute_ms": 1000 * delta.compute_s / delta.executions,
        }
    result["budget"] = asdict(sc.budget.scaled(budget_scale))
    result_path.write_text(json.dumps(result, indent=2))
    return run.returncode, result


def run_scenarios(
    names: list[str],
    task,
    repo: Path,
    url: str | None = None,
    duration_s: int = 30,
    users: int | None = None,
    budget_scale: float = 1.0,
    data_dir: str | None = None,
    work: Path | None = None,
    find_max: bool = False,
    rows: int = DEFAULT_ROWS,
) -> list[dict]:
    """Each scenario in turn (against ``url``, or a server started on ``repo``); the results."""
    import contextlib
    import time as _time

    from cascade.server.launcher import ServerOptions, TritonServer, free_ports

    work = Path(work or BENCH_WORK_DIR / "loadtest")
    work.mkdir(parents=True, exist_ok=True)
    results = []
    with contextlib.ExitStack() as stack:
        if url is None:
            http, grpc, metrics = free_ports(3)
            opts = ServerOptions(repository=Path(repo), http_port=http, grpc_port=grpc, metrics_port=metrics)
            url = stack.enter_context(TritonServer(opts)).grpc_url
        data = prepare_rows(task, url, work, data_dir, limit=rows)
        for name in names:
            sc = scenario(name)
            path = work / f"{name}-{_time.strftime('%Y%m%d-%H%M%S')}.json"
            code, result = run_locust(
                name, task.name, url, data[sc.rows], path, duration_s, users, budget_scale, find_max
            )
            result["exit_code"] = code
            results.append(result)
    return results


def print_results(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="load test: budgets (ms) and what was measured; server and Locust share the cores")
    columns = ("scenario", "rps", "p50", "p95", "p99", "fail", "budget p50/95/99", "batch", "queue ms", "verdict")
    for column in columns:
        table.add_column(column, justify="right")
    for r in results:
        m, b = r["measured"], r["budget"]
        server = r.get("server", {})
        batch = server.get("mean_batch_rows")
        table.add_row(
            r["scenario"],
            f"{m['rps']:.0f}",
            f"{m['p50_ms']:.1f}",
            f"{m['p95_ms']:.1f}",
            f"{m['p99_ms']:.1f}",
            f"{m['failure_ratio']:.2%}",
            f"{b['p50_ms']:g}/{b['p95_ms']:g}/{b['p99_ms']:g}",
            "" if batch is None else f"{batch:.2f}",
            "" if server.get("mean_queue_ms") is None else f"{server['mean_queue_ms']:.2f}",
            "ok" if not r["breaches"] else "BREACHED",
        )
    Console().print(table)
    for r in results:
        for line in r["breaches"]:
            print(f"{r['scenario']}: {line}")
        if "highest_rps_within_budget" in r:
            print(f"{r['scenario']}: highest rps within budget {r['highest_rps_within_budget']:.0f}")
            for step in r["steps"]:
                print(
                    f"  {step['users']} users: {step['rps']:.0f} rps, p50 {step['p50_ms']:.1f} "
                    f"p95 {step['p95_ms']:.1f} p99 {step['p99_ms']:.1f} ms, failures {step['failure_ratio']:.2%}"
                    + ("" if step["within_budget"] else "  (over budget)")
                )
