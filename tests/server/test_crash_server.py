"""A tier's process dies of a signal in a real server: the client's error names the model, the signal and the fix.

The encoder's stub is killed from outside with SIGILL (what a llama.cpp built for another CPU dies of) and with
SIGKILL (what the OOM killer sends); a request held to the encoder with ``on_tier_failure=error`` gets the gate's
explanation, built from the crash record the stub wrote (:mod:`cascade.crash`). The encoder is reloaded afterwards.
"""

import os
import signal
import time

import pytest
from test_failures import answered_by, stub_pid

from cascade import contract
from cascade.errors import RowsUnanswered
from cascade_client import CascadeClient

pytestmark = pytest.mark.server


def error_after_kill(server, task: str, model: str, sig: int) -> str:
    """Kill ``model``'s stub with ``sig``; the error of the next request held to it (once Triton notices)."""
    pid = stub_pid(server, model)
    os.kill(pid, sig)
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split(") ")[1][0] != "Z":
        assert time.monotonic() < deadline, f"stub {pid} still alive after {sig}"
        time.sleep(0.1)
    with CascadeClient(server.grpc_url) as client:
        tier = contract.TIER_NAMES[contract.TIER_ENCODER]
        with pytest.raises(RowsUnanswered) as caught:
            client.classify(task, ["a fine film"], min_tier=tier, max_tier=tier, on_tier_failure="error")
    return str(caught.value)


@pytest.mark.parametrize(
    "sig, words",
    [
        (signal.SIGILL, ["died with SIGILL", "an instruction this CPU does not run", "cascade doctor"]),
        (signal.SIGKILL, ["died with SIGKILL", "likely out of memory"]),
    ],
)
def test_a_dead_tier_is_named_with_its_signal_and_fix(explicit_server, sst2_task, sig, words):
    task, encoder = sst2_task.name, contract.tier_model_name(sst2_task.name, contract.TIER_ENCODER)
    try:
        with CascadeClient(explicit_server.grpc_url) as admin:
            assert answered_by(admin, task, "encoder") == {"encoder"}
        message = error_after_kill(explicit_server, task, encoder, sig)
        print(signal.Signals(sig).name, "->", message)
        assert f"{encoder}: its process died with" in message
        for w in words:
            assert w in message
    finally:
        with CascadeClient(explicit_server.grpc_url) as admin:
            admin._client.unload_model(encoder)
            admin.load_models([encoder])
            assert answered_by(admin, task, "encoder") == {"encoder"}
        # Each gate instance has its own breaker: one that saw the failure skips the tier for this long.
        time.sleep(contract.TIER_RETRY_AFTER_S)
