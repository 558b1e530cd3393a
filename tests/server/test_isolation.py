"""The slow path kept apart, against the real server: easy rows stay fast while the LLM is busy, a busy machine
makes LLM answers slower but never failed, and a lost tier's rows come back flagged best-effort, not failed."""

import time

import numpy as np
import pytest
from traffic import Traffic

from cascade import contract
from cascade.bench.busy import cpu_hog
from cascade.errors import RowsUnanswered
from cascade.gate import metrics
from cascade_client import CascadeClient

pytestmark = pytest.mark.server

TEXTS = ["a fine film", "dull and far too long", "not bad at all", "a mess"]
MIXED = TEXTS + ["it is a film about a man", "the second half", "well, it exists", "some scenes, some music"]


def test_easy_rows_are_answered_while_the_llm_is_saturated(server, sst2_task):
    """Three clients keep llm_large busy with 4-row requests; meanwhile an easy client (a precomputed embedding,
    max_tier=logreg) is answered without waiting for any LLM call."""
    task = sst2_task.name
    with CascadeClient(server.grpc_url) as client:
        embedding = client.embed(["a fine film"])
    with Traffic(server.grpc_url, task, TEXTS, min_tier="llm_large") as llm:
        time.sleep(2)  # the LLM lane is busy from here on
        with Traffic(server.grpc_url, task, None, embedding, workers=1, max_tier="logreg") as easy:
            time.sleep(6)
    print(f"llm: {len(llm.latencies)} requests, median {np.median(llm.latencies):.2f} s; easy: "
          f"{len(easy.latencies)} requests, median {np.median(easy.latencies) * 1000:.1f} ms, "
          f"max {max(easy.latencies) * 1000:.1f} ms")  # fmt: skip
    assert llm.errors == [] and easy.errors == []
    assert {a.tier_name for a in llm.answers} == {"llm_large"} and not any(a.degraded for a in llm.answers)
    # A synchronous gate answered an easy request only between LLM calls: a few per LLM request at most.
    assert len(easy.latencies) > 10 * max(1, len(llm.latencies))
    assert np.median(easy.latencies) < np.median(llm.latencies) / 10


def test_a_busy_machine_makes_llm_answers_slower_never_failed(server, sst2_task):
    """One core kept busy by another process (a busy loop started and stopped by its pid): LLM-bound requests
    from two clients are all answered by the LLM, none failed, none degraded."""
    with cpu_hog():
        with Traffic(server.grpc_url, sst2_task.name, TEXTS, workers=2, min_tier="llm_small") as llm:
            time.sleep(10)
    print(f"with a hog: {len(llm.latencies)} requests, slowest {max(llm.latencies):.2f} s")
    assert llm.errors == [] and len(llm.latencies) >= 2
    assert {a.tier for a in llm.answers} <= {contract.TIER_LLM_SMALL, contract.TIER_LLM_LARGE}
    assert not any(a.degraded for a in llm.answers)


def best_effort_rows(server, task: str) -> float:
    import urllib.request

    prefix = f"{metrics.BEST_EFFORT}{{"
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith(prefix) and f'task="{task}"' in x)


def test_an_unloaded_last_tier_gives_flagged_best_effort_answers(explicit_server, sst2_task):
    """llm_large unloaded: rows that would reach it get the most confident cheaper answer, flagged DEGRADED and
    counted; with on_tier_failure=error the request fails instead; rows no tier scored are errors; once llm_large
    is back, it answers again."""
    task = sst2_task.name
    with CascadeClient(explicit_server.grpc_url) as client:
        before = best_effort_rows(explicit_server, task)
        client._client.unload_model(contract.TIER_NAMES[contract.TIER_LLM_LARGE])
        try:
            threshold = client.task_info(task).thresholds[contract.TIER_LLM_SMALL]
            answers = client.classify(task, MIXED, min_tier="llm_small", return_probs=True)
            # Rows llm_small is sure of are its own answers; the others were meant for llm_large: best-effort.
            assert all(a.tier == contract.TIER_LLM_SMALL and a.confidence == max(a.probs) for a in answers)
            assert [a.degraded for a in answers] == [a.confidence < threshold for a in answers]
            arrays = client.classify_arrays(task, MIXED, min_tier="llm_small")
            assert arrays.degraded.tolist() == [a.degraded for a in answers]
            assert any(a.degraded for a in answers)  # the mixed rows below are not all sure for llm_small
            with pytest.raises(RowsUnanswered, match="row\\(s\\) unanswered: tier llm_large failed"):
                client.classify(task, MIXED, min_tier="llm_small", on_tier_failure="error")
            with pytest.raises(RowsUnanswered, match="unanswered"):  # nothing but llm_large may score them
                client.classify(task, TEXTS, min_tier="llm_large")
            time.sleep(1.5)  # the gate flushes its metrics once a second
            assert best_effort_rows(explicit_server, task) - before == 2 * sum(a.degraded for a in answers)
        finally:
            client.load_models([contract.TIER_NAMES[contract.TIER_LLM_LARGE]])
        deadline = time.monotonic() + 3 * contract.TIER_RETRY_AFTER_S
        while True:  # the breaker lets llm_large through again within TIER_RETRY_AFTER_S
            try:
                answers = client.classify(task, TEXTS, min_tier="llm_large")
                break
            except RowsUnanswered:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert {a.tier_name for a in answers} == {"llm_large"} and not any(a.degraded for a in answers)


def test_lane_metrics_are_exported(server, sst2_task):
    import urllib.request

    with CascadeClient(server.grpc_url) as client:
        client.classify(sst2_task.name, TEXTS, min_tier="llm_large")
    time.sleep(1.5)
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    assert f'{metrics.IN_FLIGHT}{{task="{sst2_task.name}",tier="llm_large"}}' in text
    assert f"{metrics.QUEUE_TIME}_count{{" in text and f"{metrics.BEST_EFFORT}{{" in text
