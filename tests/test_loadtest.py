"""Gate metrics, the Grafana dashboard and the Locust load test, against the real server."""

import json
import re
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from cascade import loadtest, metrics
from cascade.escalate import RowBatch, run_cascade
from cascade.tasks import REPO_ROOT

DASHBOARD = REPO_ROOT / "k8s" / "triton-cascade" / "dashboards" / "cascade.json"
#: Triton's own per-model metrics (counts, cumulative durations, and the latency summaries that the launcher's
#: ``summary_latencies=true`` turns on) that a dashboard panel may query. Spelt out here, not taken from the
#: dashboard, so that a misspelt Triton metric in a panel fails the check below.
TRITON_METRICS = frozenset(
    {
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_pending_request_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
        "nv_inference_request_summary_us",
        "nv_inference_queue_summary_us",
        "nv_inference_compute_input_summary_us",
        "nv_inference_compute_infer_summary_us",
        "nv_inference_compute_output_summary_us",
    }
)


class FixedTier:
    def __init__(self, tier, probs):
        self.tier = tier
        self.probs = np.asarray(probs, np.float32)

    def predict_proba(self, batch, rows):
        return self.probs[rows]


def test_metrics_buffer_counts_rows_escalations_and_buckets():
    t0 = FixedTier(0, [[0.05, 0.95], [0.42, 0.58], [0.45, 0.55]])
    t4 = FixedTier(4, [[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]])
    result = run_cascade(RowBatch(["a", "b", "c"]), [t0, t4], {0: 0.9}, 2, np.zeros(3), np.full(3, 4))
    times = [0.0, 0.5, 2.0]

    def clock():
        return times.pop(0) if len(times) > 1 else times[0]

    buffer = metrics.MetricsBuffer("sst2", interval_s=1.0, clock=clock)
    buffer.add(result)
    assert not buffer.due()  # 0.5 s after the start
    assert buffer.due()
    got = {(n, tuple(sorted(labels.items()))): v for n, labels, v in buffer.drain()}

    def value(name, tier, **extra):
        return got[(name, tuple(sorted({"task": "sst2", "tier": tier, **extra}.items())))]

    assert value(metrics.ROWS, "logreg") == 1 and value(metrics.ROWS, "llm_large") == 2
    assert value(metrics.ESCALATIONS, "logreg") == 2
    assert value(metrics.CONFIDENCE + "_count", "logreg") == 3
    assert value(metrics.CONFIDENCE + "_bucket", "logreg", le="0.6") == 2  # 0.55 and 0.58
    assert value(metrics.CONFIDENCE + "_bucket", "logreg", le="+Inf") == 3
    assert value(metrics.TIER_LATENCY + "_count", "llm_large") == 1
    assert buffer.drain() == []


def test_budget_breaches_are_named():
    budget = loadtest.Budget(p50_ms=5, p95_ms=10, p99_ms=20, max_failure_ratio=0.01)
    ok = {"p50_ms": 4, "p95_ms": 9, "p99_ms": 19, "failure_ratio": 0.0, "requests": 10}
    assert loadtest.breaches(ok, budget) == []
    bad = ok | {"p99_ms": 25, "failure_ratio": 0.02}
    assert loadtest.breaches(bad, budget) == ["p99 25.0 ms > budget 20 ms", "failure ratio 0.0200 > budget 0.01"]
    assert loadtest.breaches(ok | {"requests": 0}, budget) == ["no request completed"]
    with pytest.raises(Exception, match="unknown scenario 'nope'"):
        loadtest.scenario("nope")


def _scrape(server) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        return response.read().decode()


def _series(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


@pytest.mark.server
def test_gate_exports_its_metrics(client, server, sst2_task):
    def rows_total():
        return sum(v for k, v in _series(_scrape(server)).items() if k.startswith(metrics.ROWS + "{"))

    before = rows_total()
    client.classify(sst2_task.name, ["a gripping film", "dull", "fine"] * 7, max_tier="xgboost")
    deadline = time.monotonic() + 10
    while rows_total() - before < 21 and time.monotonic() < deadline:
        time.sleep(0.2)  # the gate flushes its counters once a second
    assert rows_total() - before == 21
    text = _scrape(server)
    for name in (metrics.TIER_FAILURES, metrics.CONFIDENCE + "_bucket", metrics.TIER_LATENCY + "_count"):
        assert re.search(rf'^{name}{{[^}}]*task="{sst2_task.name}"', text, re.M), name


def _expressions(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b((?:cascade|nv)_[a-zA-Z0-9_]+)\b", expr))
    return names


@pytest.mark.server
def test_locust_smoke_and_every_dashboard_metric_is_exported(server, sst2_task, tmp_path):
    """15 s of the easy scenario through Locust's gRPC users (generous budgets): serving under concurrency
    works; then every metric the Grafana dashboard queries is one the server exports."""
    run = subprocess.run(
        [
            sys.executable, "-m", "cascade.cli", "loadtest", "easy", "--url", server.grpc_url, "--task",
            sst2_task.name, "--duration", "15", "--users", "4", "--budget-scale", "50", "--results-dir", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    saved = re.search(r"saved (\S+loadtest-\S+\.json)", run.stdout).group(1)
    result = json.loads(open(saved).read())["results"][0]
    assert result["measured"]["requests"] > 100 and result["measured"]["failure_ratio"] == 0
    assert result["server"]["rows"] >= result["measured"]["requests"]

    time.sleep(1.5)  # the last metrics flush
    exported = {line.split("{")[0].split(" ")[0] for line in _scrape(server).splitlines() if line[:1].isalpha()}
    dashboard = json.loads(DASHBOARD.read_text())
    used = set().union(*(_metric_names(e) for e in _expressions(dashboard)))
    assert {metrics.ROWS, "nv_inference_request_summary_us"} <= used
    assert used <= exported, sorted(used - exported)
    assert used <= metrics.exported_names() | TRITON_METRICS, sorted(used - metrics.exported_names() - TRITON_METRICS)
