"""Flushes a gate instance's buffered metrics (``cascade.gate.metrics.MetricsBuffer``) into Triton's custom metrics.

No Triton import: ``python_backends/gate/model.py`` passes its ``triton_python_backend_utils`` module in
(:class:`MetricsFlusher`), as it does to ``cascade.gate.request_io.GateIO``. Each metric call is a round trip to the
server process, so the buffer is flushed by a thread of its own once a second (never per request), and when the gate
unloads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from cascade.gate.metrics import FLUSH_INTERVAL_S, MetricsBuffer, families


class MetricsFlusher:
    """Applies ``metrics``' buffered increments (under ``lock``) and the lanes' in-flight gauges (``in_flight``,
    e.g. ``cascade.gate.lanes.Lanes.in_flight``) through ``pb_utils.MetricFamily``: once when made, then once a
    second on its thread until :meth:`close`."""

    def __init__(
        self,
        pb_utils: Any,
        metrics: MetricsBuffer,
        lock: threading.Lock,
        in_flight: Callable[[], dict[str, int]],
        tiers: Sequence[int],
    ) -> None:
        self.metrics = metrics
        self.lock = lock
        self.in_flight = in_flight
        kinds = {False: pb_utils.MetricFamily.COUNTER, True: pb_utils.MetricFamily.GAUGE}
        self.families = {
            f.name: pb_utils.MetricFamily(name=f.name, description=f.description, kind=kinds[f.gauge])
            for f in families()
        }
        self.counters = {}
        self.metrics.touch(tiers)
        self.metrics.force()
        self.flush()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="metrics-flush", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.wait(FLUSH_INTERVAL_S):
            self.flush()

    def flush(self) -> None:
        """Apply the buffered increments and the lanes' in-flight gauges (each metric call is a round trip: at
        most once a second)."""
        with self.lock:
            self.metrics.set_in_flight(self.in_flight())
            drained = self.metrics.drain() if self.metrics.due() else []
            gauges = self.metrics.gauges()
        for name, labels, value, gauge in [(*d, False) for d in drained] + [(*g, True) for g in gauges]:
            key = (name, tuple(sorted(labels.items())))
            metric = self.counters.get(key)
            if metric is None:
                metric = self.counters[key] = self.families[name].Metric(labels=labels)
            if gauge:
                metric.set(value)
            else:
                metric.increment(value)

    def close(self) -> None:
        """Stop the thread, then flush what is left."""
        self.stopping.set()
        self.thread.join(timeout=5)
        self.metrics.force()
        self.flush()
