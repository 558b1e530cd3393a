"""The load test's metrics buffer and budgets, without a server (gate metrics, the Grafana dashboard and the Locust
load test against the real server: tests/server/test_loadtest_server.py)."""

import numpy as np
import pytest

from cascade.gate import metrics
from cascade.gate.escalate import RowBatch, run_cascade
from cascade.ops import loadtest


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
