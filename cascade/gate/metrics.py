"""The gate's Prometheus metrics: names, labels and buckets, and a buffer that turns cascade results into
counter increments. No Triton import; :mod:`cascade.gate.metrics_flush` applies the increments with
``pb_utils.MetricFamily`` and Triton exports them at ``:8002/metrics`` next to its ``nv_inference_*``.

Every metric API call of the Python backend is a round trip to the server process, so the gate adds up
increments locally and flushes them at most once per ``FLUSH_INTERVAL_S`` (and when it unloads): the
metrics lag by up to a second and cost nothing per row. Histograms are kept Prometheus-style as
cumulative ``_bucket{le=...}`` counters with ``_sum`` and ``_count``, so ``histogram_quantile`` works on
them as on any histogram.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from cascade import contract
from cascade.gate.arrays import host

#: Rows answered, per task and tier.
ROWS = "cascade_rows_total"
#: Rows a tier passed on to a later tier because their confidence was under its threshold.
ESCALATIONS = "cascade_escalations_total"
#: Rows a tier passed on because it failed (error, timeout, unloaded).
TIER_FAILURES = "cascade_tier_failures_total"
#: Top-class probability of the rows each tier scored (a histogram).
CONFIDENCE = "cascade_confidence"
#: Seconds the gate spent in each tier per batch (a histogram).
TIER_LATENCY = "cascade_tier_latency_seconds"
#: Rows answered best-effort (the tier meant to answer them failed), per task and the tier whose answer they got.
BEST_EFFORT = "cascade_best_effort_rows_total"
#: Seconds a request waited for a tier's lane in the gate before its call (a histogram), apart from TIER_LATENCY.
QUEUE_TIME = "cascade_queue_seconds"
#: Requests queued or running in each lane of the gate (a gauge; ``tier`` is the lane: embed, encoder, llm_small,
#: llm_large).
IN_FLIGHT = "cascade_in_flight_requests"
LABEL_TASK, LABEL_TIER, LABEL_LE = "task", "tier", "le"

CONFIDENCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
QUEUE_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
FLUSH_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    labels: tuple[str, ...]
    gauge: bool = False


COUNTERS = (
    Family(ROWS, "Rows the cascade answered, per task and tier", (LABEL_TASK, LABEL_TIER)),
    Family(ESCALATIONS, "Rows a tier passed on to the next (confidence under its threshold)", (LABEL_TASK, LABEL_TIER)),
    Family(TIER_FAILURES, "Rows a tier passed on because it failed", (LABEL_TASK, LABEL_TIER)),
    Family(
        BEST_EFFORT, "Rows answered best-effort after a later tier failed, per answering tier", (LABEL_TASK, LABEL_TIER)
    ),
)
GAUGES = (Family(IN_FLIGHT, "Requests queued or running in a lane of the gate", (LABEL_TASK, LABEL_TIER), gauge=True),)
HISTOGRAMS = (
    (
        Family(CONFIDENCE, "Top-class probability of the rows a tier scored", (LABEL_TASK, LABEL_TIER)),
        CONFIDENCE_BUCKETS,
    ),
    (Family(TIER_LATENCY, "Seconds the gate spent in a tier per batch", (LABEL_TASK, LABEL_TIER)), LATENCY_BUCKETS),
    (
        Family(QUEUE_TIME, "Seconds a request waited for a tier's lane in the gate", (LABEL_TASK, LABEL_TIER)),
        QUEUE_BUCKETS,
    ),
)


def families() -> list[Family]:
    """Every family the gate exports (a histogram is its ``_bucket``, ``_sum`` and ``_count`` counters)."""
    out = list(COUNTERS) + list(GAUGES)
    for family, _ in HISTOGRAMS:
        out.append(Family(family.name + "_bucket", family.description, (*family.labels, LABEL_LE)))
        out.append(Family(family.name + "_sum", family.description + " (sum)", family.labels))
        out.append(Family(family.name + "_count", family.description + " (count)", family.labels))
    return out


def exported_names() -> set[str]:
    return {f.name for f in families()}


Key = tuple[str, tuple[tuple[str, str], ...]]


class MetricsBuffer:
    """Increments added up per (family, labels) until :meth:`drain`."""

    def __init__(self, task: str, interval_s: float = FLUSH_INTERVAL_S, clock=time.monotonic) -> None:
        self.task = task
        self.interval_s = interval_s
        self._clock = clock
        self._last = clock()
        self._pending: dict[Key, float] = defaultdict(float)
        self._gauges: dict[Key, float] = {}
        self._gauges_sent: dict[Key, float] = {}

    def _add(self, name: str, tier: int, value: float, **extra: str) -> None:
        labels = {LABEL_TASK: self.task, LABEL_TIER: contract.TIER_NAMES[tier], **extra}
        self._pending[(name, tuple(sorted(labels.items())))] += value

    def _observe(self, name: str, buckets: tuple[float, ...], tier: int, values: np.ndarray) -> None:
        if values.size == 0:
            return
        counts = np.searchsorted(np.sort(values), buckets, side="right")  # cumulative: values <= le
        for le, count in zip(buckets, counts, strict=True):
            self._add(name + "_bucket", tier, float(count), le=_le(le))
        self._add(name + "_bucket", tier, float(values.size), le="+Inf")
        self._add(name + "_sum", tier, float(values.sum()))
        self._add(name + "_count", tier, float(values.size))

    def add(self, result) -> None:
        """Count one ``cascade.gate.escalate.CascadeResult``."""
        tier_all = host(result.tier)
        answered = tier_all[tier_all >= 0]
        tiers, counts = np.unique(answered, return_counts=True)
        for tier, count in zip(tiers.tolist(), counts.tolist(), strict=True):
            self._add(ROWS, tier, float(count))
        for stat in result.stats:
            passed_on = stat.rows_in - stat.answered
            if stat.failed:
                self._add(TIER_FAILURES, stat.tier, float(stat.rows_in))
            elif passed_on:
                self._add(ESCALATIONS, stat.tier, float(passed_on))
            self._observe(TIER_LATENCY, LATENCY_BUCKETS, stat.tier, np.array([stat.seconds]))
            if stat.queued_s:
                self._observe(QUEUE_TIME, QUEUE_BUCKETS, stat.tier, np.array([stat.queued_s]))
            if stat.confidence is not None:
                self._observe(CONFIDENCE, CONFIDENCE_BUCKETS, stat.tier, stat.confidence)
        if result.degraded is not None and result.degraded.any():
            best = tier_all[result.degraded]
            for tier, count in zip(*np.unique(best, return_counts=True), strict=True):
                self._add(BEST_EFFORT, int(tier), float(count))

    def set_in_flight(self, lanes: dict[str, int]) -> None:
        """The requests queued or running per lane now (sent when they change)."""
        for lane, n in lanes.items():
            labels = {LABEL_TASK: self.task, LABEL_TIER: lane}
            self._gauges[(IN_FLIGHT, tuple(sorted(labels.items())))] = float(n)

    def gauges(self) -> list[tuple[str, dict[str, str], float]]:
        """The gauge values changed since the last call ``(family, labels, value)``."""
        changed = [(k, v) for k, v in self._gauges.items() if self._gauges_sent.get(k) != v]
        self._gauges_sent.update(changed)
        return [(name, dict(labels), value) for (name, labels), value in changed]

    def force(self) -> None:
        """Make the next :meth:`due` true (the first flush, the last one at unload)."""
        self._last = -float("inf")

    def touch(self, tiers) -> None:
        """Zero increments for each tier's counters (and its histograms' totals), so every series exists from the
        first scrape."""
        for tier in tiers:
            for family in COUNTERS:
                self._add(family.name, tier, 0.0)
            for family, _ in HISTOGRAMS:
                self._add(family.name + "_bucket", tier, 0.0, le="+Inf")
                self._add(family.name + "_sum", tier, 0.0)
                self._add(family.name + "_count", tier, 0.0)
        self._gauges_sent.clear()

    def due(self) -> bool:
        return bool(self._pending) and self._clock() - self._last >= self.interval_s

    def drain(self) -> list[tuple[str, dict[str, str], float]]:
        """The added-up increments ``(family, labels, value)``; the buffer starts over."""
        out = [(name, dict(labels), value) for (name, labels), value in self._pending.items()]
        self._pending.clear()
        self._last = self._clock()
        return out


def _le(bound: float) -> str:
    return f"{bound:g}"
