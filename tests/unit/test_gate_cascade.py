"""The gate's cascade (cascade.gate.escalate), tested directly with plain Python tiers: which rows escalate,
failures,
cancellation, and embedding on demand, in every placement (``at``)."""

import numpy as np
import pytest

from cascade import contract
from cascade.errors import TierFailure
from cascade.gate.arrays import Placement, host
from cascade.gate.escalate import Cancelled, RowBatch, run_cascade


class FixedTier:
    """A tier whose probabilities are given per row; records which rows it saw. It answers in the batch's
    placement, as the gate's tiers do (a BLS output taken by DLPack on a GPU)."""

    def __init__(self, tier, probs, fail=False):
        self.tier = tier
        self.probs = np.asarray(probs, np.float32)
        self.fail = fail
        self.seen = None

    def predict_proba(self, batch, rows):
        self.seen = host(rows).tolist()
        if self.fail:
            raise TierFailure("model unavailable")
        return batch.placement.asarray(self.probs[host(rows)])


def p(*positives):
    return [[1 - x, x] for x in positives]


def run(at, tiers, thresholds, n, min_tier=0, max_tier=4, on_tier_failure="best_effort"):
    batch = RowBatch([f"row {i}" for i in range(n)], placement=at)
    min_tier, max_tier = at.full((n,), min_tier), at.full((n,), max_tier)
    result = run_cascade(batch, tiers, thresholds, 2, min_tier, max_tier, on_tier_failure=on_tier_failure)
    assert Placement.of(result.probs).device == at.device and Placement.of(result.tier).device == at.device
    result.tier = host(result.tier)
    return result


def test_rows_escalate_only_when_below_threshold(at):
    t0 = FixedTier(0, p(0.99, 0.6, 0.05, 0.5))
    t1 = FixedTier(1, p(0.5, 0.95, 0.5, 0.7))
    t2 = FixedTier(2, p(0.5, 0.5, 0.5, 0.2))
    result = run(at, [t0, t1, t2], {0: 0.9, 1: 0.9}, 4)
    assert t0.seen == [0, 1, 2, 3]
    assert t1.seen == [1, 3]  # rows 0 and 2 were confident at tier 0
    assert t2.seen == [3]
    assert result.tier.tolist() == [0, 1, 0, 2]
    assert result.label_index.tolist() == [1, 1, 0, 0]
    np.testing.assert_allclose(result.confidence, [0.99, 0.95, 0.95, 0.8], rtol=1e-6)
    assert result.errors == [None] * 4
    assert [(s.tier, s.rows_in, s.answered) for s in result.stats] == [(0, 4, 2), (1, 2, 1), (2, 1, 1)]


def test_last_tier_answers_whatever_reaches_it(at):
    t0 = FixedTier(0, p(0.6, 0.55))
    t1 = FixedTier(1, p(0.51, 0.5))
    result = run(at, [t0, t1], {0: 0.99}, 2)
    assert result.tier.tolist() == [1, 1]


def test_max_tier_makes_a_cheaper_tier_final(at):
    t0 = FixedTier(0, p(0.6, 0.99))
    t1 = FixedTier(1, p(0.9, 0.9))
    result = run(at, [t0, t1], {0: 0.95}, 2, max_tier=0)
    assert t1.seen is None
    assert result.tier.tolist() == [0, 0]


def test_min_tier_skips_cheaper_tiers(at):
    t0 = FixedTier(0, p(0.99))
    t1 = FixedTier(1, p(0.7))
    result = run(at, [t0, t1], {0: 0.5}, 1, min_tier=1)
    assert t0.seen is None
    assert result.tier.tolist() == [1]


def test_failing_tier_escalates_its_rows(at):
    t0 = FixedTier(0, p(0.99, 0.99), fail=True)
    t1 = FixedTier(1, p(0.3, 0.8))
    result = run(at, [t0, t1], {0: 0.5}, 2)
    assert result.tier.tolist() == [1, 1]
    assert result.errors == [None, None]
    assert result.stats[0].failed


def test_failing_last_tier_reports_rows_as_errors_when_asked(at):
    t0 = FixedTier(0, p(0.99, 0.6))
    t1 = FixedTier(1, p(0.3, 0.8), fail=True)
    result = run(at, [t0, t1], {0: 0.9}, 2, on_tier_failure="error")
    assert result.tier.tolist() == [0, -1]
    assert result.errors[0] is None
    assert "tier xgboost failed: model unavailable" in result.errors[1]
    assert result.degraded.tolist() == [False, False]


def test_failing_last_tier_gives_the_most_confident_answer_flagged(at):
    """best_effort (the default): a row whose last tier failed gets the answer of the most confident tier that
    scored it, flagged; only a row no tier scored is an error."""
    t0 = FixedTier(0, p(0.99, 0.6, 0.3))
    t1 = FixedTier(1, p(0.5, 0.2, 0.45))  # row 1: 0.8 for negative, more confident than tier 0's 0.6
    t4 = FixedTier(4, p(0.5, 0.5, 0.5), fail=True)
    result = run(at, [t0, t1, t4], {0: 0.9, 1: 0.9}, 3)
    assert result.tier.tolist() == [0, 1, 0]  # row 2: tier 0 (0.7) beat tier 1 (0.55)
    assert result.degraded.tolist() == [False, True, True]
    assert result.errors == [None, None, None]
    assert result.label_index.tolist() == [1, 0, 0]
    np.testing.assert_allclose(result.confidence, [0.99, 0.8, 0.7], rtol=1e-6)
    # min_tier past every scoring tier: nothing scored the rows, so they stay errors.
    t4.seen = None
    result = run(at, [t0, t1, t4], {0: 0.9, 1: 0.9}, 2, min_tier=4)
    assert result.tier.tolist() == [-1, -1] and all("failed" in e for e in result.errors)
    assert result.degraded.tolist() == [False, False]


def test_tier_returning_bad_shape_is_a_failure(at):
    bad = FixedTier(0, [[0.5, 0.5, 0.0]])
    good = FixedTier(1, p(0.9))
    result = run(at, [bad, good], {0: 0.5}, 1)
    assert result.tier.tolist() == [1]
    assert "shape" in result.stats[0].error


def test_cancellation_is_checked_before_text_tiers_only(at):
    t0, t1, t2 = FixedTier(0, p(0.6)), FixedTier(1, p(0.6)), FixedTier(2, p(0.9))
    asked = []

    def cancelled():
        asked.append(True)
        return True

    with pytest.raises(Cancelled):
        run_cascade(
            RowBatch(["x"], placement=at),
            [t0, t1, t2],
            {0: 0.9, 1: 0.9},
            2,
            at.full((1,), 0),
            at.full((1,), 4),
            cancelled,
        )
    # The embedding tiers ran (sub-millisecond, no round trip to ask); the encoder did not.
    assert t0.seen == [0] and t1.seen == [0] and t2.seen is None
    assert len(asked) == 1


def test_row_batch_embeds_only_missing_rows_once(at):
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return np.ones((len(texts), contract.EMBEDDING_DIM), np.float32)

    given = np.full((3, contract.EMBEDDING_DIM), 2.0, np.float32)
    have = np.array([True, False, True])
    batch = RowBatch(["a", "b", "c"], embeddings=at.asarray(given), have_embedding=have, embed=embed, placement=at)
    out = batch.embedding(at.full((3,), 0) + at.asarray(np.arange(3), dtype="int64"))
    batch.embedding(at.full((1,), 1))
    assert calls == [["b"]]
    assert Placement.of(out).device == at.device and host(out)[:, 0].tolist() == [2.0, 1.0, 2.0]
    assert batch.embedded_rows == 1
