"""The gate's tier guard (cascade.gate.calls): the deadline of each tier call and the circuit breaker."""

import pytest

from cascade.errors import TierFailure
from cascade.gate.calls import TierGuard


def test_guard_returns_answers_and_passes_failures_on():
    guard = TierGuard(workers=3, retry_after_s=60)
    assert guard.call("a", lambda: 41 + 1, timeout_s=1) == 42

    def broken():
        raise TierFailure("a: stub not healthy")

    with pytest.raises(TierFailure, match="not healthy"):
        guard.call("a", broken, timeout_s=1)
    # The breaker is open: the next call is skipped at once, naming the failure; other targets still run.
    with pytest.raises(TierFailure, match=r"skipped for 60 s after a failure \(a: stub not healthy\)"):
        guard.call("a", lambda: 1, timeout_s=1)
    assert guard.call("b", lambda: 2, timeout_s=1) == 2
    assert guard.down() == ["a"]
    guard.close()


def test_guard_deadline_abandons_a_hung_call_and_tries_again_once_it_returns():
    import threading
    import time

    release = threading.Event()
    calls = []

    def hung():
        calls.append("hung")
        release.wait(10)
        return 0

    guard = TierGuard(workers=2, retry_after_s=0.05)
    start = time.monotonic()
    with pytest.raises(TierFailure, match="no answer within 100 ms"):
        guard.call("llm", hung, timeout_s=0.1)
    assert time.monotonic() - start < 2  # the deadline, not the hung call, bounds the wait
    time.sleep(0.1)  # past retry_after_s, but the abandoned call still runs: still skipped, fn not called
    with pytest.raises(TierFailure, match="still running past its deadline"):
        guard.call("llm", lambda: calls.append("second"), timeout_s=0.1)
    assert calls == ["hung"] and guard.down() == ["llm"]
    release.set()
    time.sleep(0.1)
    assert guard.call("llm", lambda: 7, timeout_s=0.1) == 7  # it answered at last: back in use
    assert guard.down() == []
    guard.close()


def test_a_busy_tier_does_not_open_the_breaker_but_a_failed_one_does():
    from cascade.errors import TierBusy
    from cascade.gate.calls import failure_of

    busy = failure_of("llm_large", "Request timeout expired")
    assert isinstance(busy, TierBusy) and "llm_large: Request timeout expired" in str(busy)
    dead = failure_of("llm_large", "Stub process 'llm_large_0_0' is not healthy.")
    assert type(dead) is TierFailure
    guard = TierGuard(workers=2, retry_after_s=60)

    def raise_(exc):
        raise exc

    for _ in range(3):  # busy again and again: each call still tries the tier
        with pytest.raises(TierBusy):
            guard.call("llm_large", lambda: raise_(busy), timeout_s=1)
    assert guard.down() == [] and guard.call("llm_large", lambda: 5, timeout_s=1) == 5
    with pytest.raises(TierFailure):
        guard.call("llm_large", lambda: raise_(dead), timeout_s=1)
    assert guard.down() == ["llm_large"]
    guard.close()
