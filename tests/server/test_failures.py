"""A failing tier while traffic flows, against the real server: unloaded, too slow, or its process killed.

Each case runs client threads that keep sending requests while the tier fails, and checks that every request
was answered (by the next tier), that the gate counted the rows in ``cascade_tier_failures_total``, and that
traffic returns to the tier once it is back.
"""

import json
import os
import signal
import time
import urllib.request

import pytest
from traffic import Traffic

from cascade import contract
from cascade.gate import metrics
from cascade_client import CascadeClient

pytestmark = pytest.mark.server

TEXTS = ["a fine film", "dull and far too long", "not bad at all", "a mess"]


def tier_failures(server, task: str, tier: str) -> float:
    series = f'{metrics.TIER_FAILURES}{{task="{task}",tier="{tier}"}}'
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for_failures(server, task: str, tier: str, at_least: float, timeout_s: float = 10) -> float:
    """The counter once it reaches ``at_least`` (the gate flushes its metrics once a second)."""
    deadline = time.monotonic() + timeout_s
    while (value := tier_failures(server, task, tier)) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def answered_by(client, task: str, tier: str, timeout_s: float = 3 * contract.TIER_RETRY_AFTER_S) -> set[str]:
    """The tiers that answer a request held to ``tier``, once the gate's breaker lets it through again."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return {p.tier_name for p in client.classify(task, TEXTS, min_tier=tier, max_tier=tier)}
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def stub_pid(server, model: str) -> int:
    """The Python-backend stub process serving ``model`` in ``server`` (other servers may serve the same files)."""
    from cascade.ops.soak import stubs

    pids = [pid for pid, name in stubs(server.pid).items() if name == model]
    if len(pids) != 1:
        raise LookupError(f"{len(pids)} stub processes serve {model} in server {server.pid}")
    return pids[0]


def test_an_unloaded_tier_is_skipped_under_load_counted_and_comes_back(explicit_server, sst2_task):
    """Unload the encoder (explicit model control) while three clients send requests: its rows go to llm_small,
    no request fails or hangs, the rows are counted; once reloaded the encoder answers again."""
    task, encoder = sst2_task.name, contract.tier_model_name(sst2_task.name, contract.TIER_ENCODER)
    with CascadeClient(explicit_server.grpc_url) as admin:
        before = tier_failures(explicit_server, task, "encoder")
        with Traffic(explicit_server.grpc_url, task, TEXTS, min_tier="encoder", max_tier="llm_small") as traffic:
            time.sleep(1)
            admin._client.unload_model(encoder)
            time.sleep(3)
            admin.load_models([encoder])
            time.sleep(1)
        print("unloaded encoder:", traffic)
        assert traffic.errors == [] and traffic.requests >= 6
        assert traffic.tiers["llm_small"] > 0  # the encoder's rows went on while it was away
        assert wait_for_failures(explicit_server, task, "encoder", before + len(TEXTS)) >= before + len(TEXTS)
        assert answered_by(admin, task, "encoder") == {"encoder"}


def test_a_tier_past_its_deadline_is_skipped_and_its_rows_go_on(explicit_server, sst2_task, reconfigure):
    """llm_small with a 20 ms + 1 ms/row deadline (``tier_timeouts_ms``, ``row_timeouts_ms``, set by reloading the
    gate with a config override): each call misses it, the gate abandons the call, skips llm_small while the call
    still runs and for TIER_RETRY_AFTER_S after it, and llm_large answers every row; no request fails or hangs."""
    task = sst2_task.name
    deadline = {
        contract.CFG_TIER_TIMEOUTS_MS: json.dumps({"llm_small": 20}),
        contract.CFG_ROW_TIMEOUTS_MS: json.dumps({"llm_small": 1}),
    }
    with CascadeClient(explicit_server.grpc_url) as client:
        with reconfigure(task, **deadline):
            before = tier_failures(explicit_server, task, "llm_small")
            with Traffic(explicit_server.grpc_url, task, TEXTS, workers=2, min_tier="llm_small") as traffic:
                time.sleep(4)
            print("llm_small past its deadline:", traffic)
            assert traffic.errors == [] and traffic.requests >= 2
            assert set(traffic.tiers) == {"llm_large"}
            counted = wait_for_failures(explicit_server, task, "llm_small", before + sum(traffic.tiers.values()))
            assert counted - before == sum(traffic.tiers.values())  # every row: timed out or skipped
        assert answered_by(client, task, "llm_small") == {"llm_small"}


def test_a_killed_tier_process_is_skipped_until_the_tier_is_reloaded(explicit_server, sst2_task):
    """kill -9 of the encoder's stub process (as the OOM killer would): Triton 2.51 neither restarts it nor marks
    the model unready; the gate passes its rows on (paying Triton's ~1 s health check once per breaker
    interval, not per request) until an unload + load starts a new stub."""
    task, encoder = sst2_task.name, contract.tier_model_name(sst2_task.name, contract.TIER_ENCODER)
    with CascadeClient(explicit_server.grpc_url) as admin:
        assert answered_by(admin, task, "encoder") == {"encoder"}
        before = tier_failures(explicit_server, task, "encoder")
        os.kill(stub_pid(explicit_server, encoder), signal.SIGKILL)
        with Traffic(explicit_server.grpc_url, task, TEXTS, min_tier="encoder", max_tier="llm_small") as traffic:
            time.sleep(4)
        print("killed encoder stub:", traffic)
        assert traffic.errors == [] and traffic.requests >= 3
        assert set(traffic.tiers) == {"llm_small"}
        assert admin._client.is_model_ready(encoder)  # Triton still calls it ready: only the gate notices
        rows = sum(traffic.tiers.values())
        assert wait_for_failures(explicit_server, task, "encoder", before + rows) - before == rows
        admin._client.unload_model(encoder)
        admin.load_models([encoder])
        assert answered_by(admin, task, "encoder") == {"encoder"}
