"""The gate's lanes (cascade.gate.lanes) with plain Python tiers: the fast path never waits for the slow path."""

import threading
import time

import numpy as np
import pytest

from cascade import contract
from cascade.errors import ServerUnavailable, TierFailure
from cascade.gate.escalate import Cancelled, CascadeRun, RowBatch
from cascade.gate.lanes import EMBED, INLINE, Job, Lanes, lane_names, lane_of


class Tier:
    """A tier that answers ``conf`` for the positive class; it may wait for ``gate`` first (a busy LLM)."""

    def __init__(self, tier, conf, gate=None, fail=False):
        self.tier, self.conf, self.gate, self.fail = tier, conf, gate, fail
        self.threads = []

    def predict_proba(self, batch, rows):
        self.threads.append(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise TierFailure("stub process is not healthy")
        return np.tile(np.array([1 - self.conf, self.conf], np.float32), (len(rows), 1))


def job(tiers, n=2, min_tier=0, max_tier=4, embeddings=True, cancelled=lambda: False):
    emb = np.ones((n, contract.EMBEDDING_DIM), np.float32) if embeddings else None
    batch = RowBatch(
        [f"row {i}" for i in range(n)], embeddings=emb, embed=lambda texts: np.ones((len(texts), 384), np.float32)
    )
    run = CascadeRun(batch, tiers, {0: 0.9, 2: 0.9}, 2, np.full(n, min_tier), np.full(n, max_tier))
    done = threading.Event()
    handed = []

    def on_done(j):
        j.result = None if j.error else j.run.finish()
        j.finished_at = time.monotonic()
        done.set()

    j = Job(run, on_done=on_done, on_handover=lambda j: handed.append(True), cancelled=cancelled)
    j.done, j.handed = done, handed
    return j


@pytest.fixture
def lanes():
    lanes = Lanes(queue_timeout_s=30, names=lane_names((0, 2, 4)))
    yield lanes
    lanes.close(timeout_s=2)


def test_lane_names_and_routing():
    assert lane_names((0, 1, 2, 3, 4)) == (EMBED, "encoder", "llm_small", "llm_large")
    assert lane_names((3, 4)) == ("llm_small", "llm_large")
    t0, t4 = Tier(0, 0.5), Tier(4, 0.5)
    assert lane_of(job([t0, t4]), t0) == INLINE
    assert lane_of(job([t0, t4], embeddings=False), t0) == EMBED  # the embedder first: not inline
    assert lane_of(job([t0, t4]), t4) == "llm_large"


def test_an_easy_request_is_answered_while_the_llm_lane_is_busy(lanes):
    release = threading.Event()
    t0, t2, t4 = Tier(0, 0.99), Tier(2, 0.5), Tier(4, 0.8, gate=release)
    hard = job([t0, t2, t4], min_tier=4)
    lanes.start(hard)
    assert hard.handed == [True] and not hard.done.is_set()  # execute returned; the LLM lane has it
    time.sleep(0.05)
    assert lanes.in_flight()["llm_large"] == 1
    easy = job([t0, t2, t4])
    lanes.start(easy)  # answered inline by tier 0, on this thread, while the LLM call still runs
    assert easy.done.is_set() and easy.handed == [] and easy.result.tier.tolist() == [0, 0]
    text = job([t0, t2, t4], embeddings=False)  # needs the embedder: the embed lane, not the busy LLM lane
    lanes.start(text)
    assert text.done.wait(5) and text.result.tier.tolist() == [0, 0]
    assert not hard.done.is_set()
    release.set()
    assert hard.done.wait(5) and hard.result.tier.tolist() == [4, 4]
    assert t4.threads == ["lane-llm_large"] and t0.threads[-1] == "lane-embed"
    assert lanes.in_flight()["llm_large"] == 0


def test_rows_move_from_lane_to_lane_and_a_failed_last_tier_gives_best_effort(lanes):
    t0, t2, t4 = Tier(0, 0.6), Tier(2, 0.7), Tier(4, 0.5, fail=True)
    j = job([t0, t2, t4])
    lanes.start(j)
    assert j.done.wait(5)
    assert t2.threads == ["lane-encoder"] and t4.threads == ["lane-llm_large"]
    assert j.result.tier.tolist() == [2, 2] and j.result.degraded.tolist() == [True, True]
    assert [s.queued_s >= 0 for s in j.result.stats] == [True, True, True]


def test_past_the_queue_timeout_rows_are_passed_on_as_busy_not_called():
    lanes = Lanes(queue_timeout_s=0.2, names=lane_names((0, 4)))
    release = threading.Event()
    t0, t4 = Tier(0, 0.6), Tier(4, 0.8, gate=release)
    first, second = job([t0, t4]), job([t0, t4])
    lanes.start(first)
    lanes.start(second)  # waits behind the first in the llm_large lane
    time.sleep(0.4)
    release.set()
    assert first.done.wait(5) and second.done.wait(5)
    assert first.result.tier.tolist() == [4, 4] and not first.result.degraded.any()
    assert second.result.tier.tolist() == [0, 0] and second.result.degraded.all()  # tier 0's answer, flagged
    busy = second.result.stats[-1]
    assert busy.failed and "waited" in busy.error and busy.queued_s >= 0.2
    assert len(t4.threads) == 1  # the late request never called the tier
    lanes.close(timeout_s=2)


def test_a_cancelled_request_is_not_sent_to_a_text_tier(lanes):
    t0, t4 = Tier(0, 0.6), Tier(4, 0.8)
    j = job([t0, t4], cancelled=lambda: True)
    lanes.start(j)
    assert j.done.wait(5) and isinstance(j.error, Cancelled) and t4.threads == []


def test_close_answers_queued_requests_unavailable():
    lanes = Lanes(queue_timeout_s=30, names=lane_names((0, 4)))
    release = threading.Event()
    t0, t4 = Tier(0, 0.6), Tier(4, 0.8, gate=release)
    running, queued = job([t0, t4]), job([t0, t4])
    lanes.start(running)
    lanes.start(queued)
    time.sleep(0.05)
    closer = threading.Thread(target=lanes.close, kwargs={"timeout_s": 5})
    closer.start()
    time.sleep(0.05)
    release.set()
    closer.join()
    assert running.done.is_set() and running.result.tier.tolist() == [4, 4]
    assert queued.done.is_set() and isinstance(queued.error, ServerUnavailable)
