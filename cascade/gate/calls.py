"""Calls from the gate to a tier model: a deadline the gate enforces, and a circuit breaker that tells busy from dead.

No Triton import: ``cascade.gate.tiers`` passes the BLS call in as a function.

- **Allowances.** A call may *run* for its execution allowance, which grows with its rows
  (``GateConfig.exec_allowance_s``: a base plus a deadline per row). Before that it may *wait* in Triton's queue
  for the tier about as long (behind a call of another gate instance or task), never past the lane's queue
  allowance; Triton itself rejects it past that (the BLS request's ``timeout``), and that rejection is
  :class:`TierBusy`. The gate stops waiting after both together: only then is the tier hung. The wait in the
  gate's own lane (``cascade.gate.lanes``) comes before and is counted apart.
- **Breaker.** A tier that answers with an error (unloaded, its stub killed, a crash) or misses the deadline is
  skipped at once for ``retry_after_s``, and for as long as an abandoned call to it still runs; then the next call
  tries it again. A *busy* tier (:class:`TierBusy`) never opens the breaker: its rows get a best-effort answer or
  the next tier, and the next call tries it as usual.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from cascade import contract, crash
from cascade.errors import TierBusy, TierFailure

#: What Triton 2.51 answers for a request that stayed in a model's queue past its timeout.
QUEUE_TIMEOUT_MESSAGES = ("Request timeout expired",)


def failure_of(target: str, message: str) -> TierFailure:
    """The error of a tier call that answered with ``message``: busy (a queue timeout) or failed. A dead stub's
    message is replaced by its crash record's explanation (:func:`cascade.crash.explain`: the signal, its likely
    cause and the fix); the gate runs in a stub of the same server, so its parent is that server."""
    if any(m in message for m in QUEUE_TIMEOUT_MESSAGES):
        return TierBusy(f"{target}: {message}")
    explained = crash.explain(message, server_pid=os.getppid())
    return TierFailure(explained or f"{target}: {message}")


class TierGuard:
    """Run each call to a tier model on a worker thread, with a deadline, behind a circuit breaker."""

    def __init__(self, workers: int, retry_after_s: float = contract.TIER_RETRY_AFTER_S) -> None:
        self.retry_after_s = retry_after_s
        # Each caller thread (the gate's execute and its lanes) runs one call at a time; abandoned calls hold at
        # most one more worker per target.
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tier-call")
        self._abandoned: dict[str, Future] = {}
        self._open: dict[str, tuple[float, str]] = {}  # target -> (skip until, the failure that opened it)
        self._lock = threading.Lock()

    def call(self, target: str, fn: Callable[[], object], timeout_s: float) -> object:
        """``fn()``, which raises TierFailure (or TierBusy) for a failed call; raises TierFailure when skipped or
        late. ``timeout_s`` is the whole deadline: queue allowance + execution allowance."""
        self._check(target)
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            with self._lock:
                self._abandoned[target] = future
            self._trip(target, f"no answer within {timeout_s * 1000:.0f} ms")
            raise TierFailure(f"{target}: no answer within {timeout_s * 1000:.0f} ms") from None
        except TierBusy:
            raise  # busy, not dead: the breaker stays closed
        except TierFailure as exc:
            self._trip(target, str(exc))
            raise

    def _check(self, target: str) -> None:
        with self._lock:
            stuck = self._abandoned.get(target)
            if stuck is not None and not stuck.done():
                raise TierFailure(f"{target}: skipped, a call to it is still running past its deadline")
            self._abandoned.pop(target, None)
            until, why = self._open.get(target, (0.0, ""))
            if time.monotonic() < until:
                raise TierFailure(f"{target}: skipped for {self.retry_after_s:g} s after a failure ({why})")
            self._open.pop(target, None)

    def _trip(self, target: str, why: str) -> None:
        with self._lock:
            self._open[target] = (time.monotonic() + self.retry_after_s, why)

    def down(self) -> list[str]:
        """Targets skipped now."""
        now = time.monotonic()
        with self._lock:
            stuck = {t for t, f in self._abandoned.items() if not f.done()}
            return sorted(stuck | {t for t, (until, _) in self._open.items() if now < until})

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
