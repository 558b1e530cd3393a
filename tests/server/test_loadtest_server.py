"""Gate metrics, the Grafana dashboard and the Locust load test, against the real server."""

import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from cascade.gate import metrics
from cascade.llm import meter
from cascade.paths import CHART_DIR

DASHBOARD = CHART_DIR / "dashboards" / "cascade.json"
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
            sys.executable, "-m", "cascade.cli.main", "loadtest", "easy", "--url", server.grpc_url, "--task",
            sst2_task.name, "--duration", "15", "--users", "4", "--budget-scale", "50", "--rows", "120",
            "--results-dir", str(tmp_path),
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
    ours = metrics.exported_names() | set(meter.FAMILIES)  # the gate's and the LLM tiers' (cascade.llm.meter)
    assert used <= ours | TRITON_METRICS, sorted(used - ours - TRITON_METRICS)
