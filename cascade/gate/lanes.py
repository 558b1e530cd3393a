"""The gate's lanes: a request the embedding tiers answer never waits behind an LLM call.

Triton runs a (non-decoupled) Python model's ``execute`` one batch at a time per instance, so a gate that ran the
whole cascade inside ``execute`` would hold every easy request behind an instance that sits in an LLM call.
``execute`` therefore only parses the requests and runs their cheap steps inline; a request with rows left for a costly
tier is handed to that tier's **lane** (a queue and one thread of this process) and ``execute`` returns at once.
The lane answers the request later through its response sender (Triton >= 24.06 lets a default-mode model answer
that way), so clients keep plain unary ``ModelInfer``.

- ``inline``: the embedding tiers (logreg, xgboost) of rows that came with their embedding.
- ``embed``: the same tiers for rows that need the embedder first (a 4,096-row text request embeds for seconds).
- one lane per text tier (``encoder``, ``llm_small``, ``llm_large``): one call at a time to that tier.

A request moves from lane to lane as its rows escalate. The time it waits for a lane is its queue time, measured
apart from the tier's execution (metrics) and bounded by the gate's ``queue_timeout_ms``: past it the rows are
passed on as if the tier were busy (a best-effort answer or the next tier), without opening the breaker.
No Triton import: ``cascade.gate.request_io`` supplies the hand-over and answer callbacks.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cascade import contract
from cascade.errors import CascadeError, ServerUnavailable, TierBusy
from cascade.gate.escalate import Cancelled, CascadeRun, Tier

INLINE = "inline"
EMBED = "embed"
#: The lane of each text tier is named after the tier.
TEXT_LANES = tuple(contract.TIER_NAMES[t] for t in sorted(contract.TIER_NAMES) if t not in contract.EMBEDDING_TIERS)


@dataclass
class Job:
    """One request on its way through the lanes."""

    run: CascadeRun
    #: Called once with the finished job (``error`` set when it ended without a result).
    on_done: Callable[[Job], None]
    #: Called once, on the thread of ``execute``, before the job first leaves it (take the response sender, copy
    #: the inputs that Triton frees when ``execute`` returns).
    on_handover: Callable[[Job], None] | None = None
    cancelled: Callable[[], bool] = lambda: False
    error: CascadeError | None = None
    enqueued_at: float = 0.0
    handed_over: bool = field(default=False, init=False)


def lane_names(tiers) -> tuple[str, ...]:
    """The lanes a gate with these enabled tiers needs."""
    embed = (EMBED,) if any(t in contract.EMBEDDING_TIERS for t in tiers) else ()
    return embed + tuple(contract.TIER_NAMES[t] for t in sorted(tiers) if t not in contract.EMBEDDING_TIERS)


def lane_of(job: Job, tier: Tier) -> str:
    if tier.tier in contract.EMBEDDING_TIERS:
        return EMBED if job.run.batch.lacks_embedding(job.run.rows_for(tier)) else INLINE
    return contract.TIER_NAMES[tier.tier]


class Lanes:
    """The lane threads of one gate instance."""

    def __init__(
        self,
        queue_timeout_s: float,
        names: tuple[str, ...] = (EMBED, *TEXT_LANES),
        log_error: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.queue_timeout_s = queue_timeout_s
        self._log_error = log_error
        self._queues: dict[str, queue.SimpleQueue] = {name: queue.SimpleQueue() for name in names}
        self._busy: dict[str, int] = dict.fromkeys(names, 0)  # jobs queued or running, per lane
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, args=(name,), name=f"lane-{name}", daemon=True) for name in names
        ]
        for thread in self._threads:
            thread.start()

    def start(self, job: Job) -> None:
        """Run ``job``'s inline steps on this thread; hand it to a lane, or finish it."""
        self._advance(job, INLINE)

    def in_flight(self) -> dict[str, int]:
        """Requests queued or running per lane."""
        with self._lock:
            return dict(self._busy)

    def _advance(self, job: Job, here: str) -> None:
        try:
            while (tier := job.run.next_tier()) is not None:
                lane = lane_of(job, tier)
                if lane not in (here, INLINE):
                    self._hand(job, lane)
                    return
                if tier.tier not in contract.EMBEDDING_TIERS and job.cancelled():
                    raise Cancelled("request cancelled by the client")
                if here == INLINE:
                    job.run.batch.queue_deadline = time.monotonic() + self.queue_timeout_s
                job.run.step(tier)
        except CascadeError as exc:
            job.error = exc
        except Exception as exc:  # noqa: BLE001 - one request's bug must not kill a lane thread
            job.error = CascadeError(f"the gate failed on this request: {exc!r}")
        job.on_done(job)

    def _hand(self, job: Job, lane: str) -> None:
        if not job.handed_over:
            job.handed_over = True
            if job.on_handover is not None:
                job.on_handover(job)
        if self._stopping.is_set():
            job.error = ServerUnavailable("the gate is unloading; send the request again")
            job.on_done(job)
            return
        job.enqueued_at = time.monotonic()
        with self._lock:
            self._busy[lane] += 1
        self._queues[lane].put(job)

    def _work(self, lane: str) -> None:
        source = self._queues[lane]
        while True:
            job = source.get()
            if job is None:
                return
            try:
                self._take(job, lane)
            except Exception as exc:  # noqa: BLE001 - a failing callback must not end the lane
                self._log_error(f"lane {lane}: {exc!r}")
            finally:
                with self._lock:
                    self._busy[lane] -= 1

    def _take(self, job: Job, lane: str) -> None:
        waited = time.monotonic() - job.enqueued_at
        if self._stopping.is_set():
            job.error = ServerUnavailable("the gate is unloading; send the request again")
            job.on_done(job)
            return
        tier = job.run.next_tier()
        if tier is not None and waited >= self.queue_timeout_s:
            # Busy, not dead: the rows are passed on (best effort or the next tier), the breaker stays closed.
            busy = TierBusy(f"{lane}: waited {waited:.1f} s for the tier (queue_timeout_ms {self.queue_timeout_s:g} s)")
            job.run.step(tier, failure=busy, queued_s=waited)
        elif tier is not None:
            job.run.batch.queue_deadline = job.enqueued_at + self.queue_timeout_s
            if tier.tier not in contract.EMBEDDING_TIERS and job.cancelled():
                job.error = Cancelled("request cancelled by the client")
                job.on_done(job)
                return
            try:
                job.run.step(tier, queued_s=waited)
            except Exception as exc:  # noqa: BLE001
                job.error = CascadeError(f"the gate failed on this request: {exc!r}")
                job.on_done(job)
                return
        self._advance(job, lane)

    def close(self, timeout_s: float = 10.0) -> None:
        """Answer queued jobs with UNAVAILABLE, let running calls end (up to ``timeout_s``), stop the threads."""
        self._stopping.set()
        for q in self._queues.values():
            q.put(None)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
