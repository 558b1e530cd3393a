"""Threshold calibration with an exact one-sided binomial (Clopper-Pearson) guarantee."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import beta


def clopper_pearson_lower(successes: np.ndarray | int, trials: np.ndarray | int, delta: float) -> np.ndarray:
    """One-sided lower bound at confidence 1-delta on a binomial proportion (0 where trials=0)."""
    successes = np.asarray(successes, dtype=float)
    trials = np.asarray(trials, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = beta.ppf(delta, successes, trials - successes + 1)
    return np.where((successes > 0) & (trials > 0), np.nan_to_num(bound), 0.0)


@dataclass(frozen=True)
class TierCalibration:
    tier: int
    rows: int  # rows that reached this tier on the calibration set
    enabled: bool  # False: the tier cannot reach the target at useful coverage
    threshold: float | None  # None for a disabled tier and for the last tier (it answers all)
    coverage: float  # share of the reaching rows the tier accepts at that threshold
    agreement: float  # agreement of the accepted rows with the reference labels
    lower_bound: float  # Clopper-Pearson lower bound of that agreement

    def to_dict(self) -> dict:
        return asdict(self)


def choose_threshold(
    confidence: np.ndarray,
    correct: np.ndarray,
    target: float,
    delta: float,
    min_coverage: float = 0.02,
    tier: int = 0,
) -> TierCalibration:
    """The lowest threshold whose accepted rows agree at >= target with confidence 1-delta.

    Accepting the rows with confidence >= t; among the candidate cut points (the observed
    confidences), take the one that accepts the most rows while the Clopper-Pearson lower bound of
    their agreement stays >= target. If that accepts fewer than ``min_coverage`` of the rows, the
    tier is disabled (threshold None).
    """
    n = len(confidence)
    if n == 0:
        return TierCalibration(tier, 0, False, None, 0.0, 0.0, 0.0)
    order = np.argsort(-confidence, kind="stable")
    conf = confidence[order]
    hits = np.cumsum(correct[order].astype(int))
    accepted = np.arange(1, n + 1)
    # A cut is only valid after the last row of a run of equal confidences.
    valid = np.append(conf[1:] < conf[:-1], True)
    lower = clopper_pearson_lower(hits, accepted, delta)
    ok = np.flatnonzero(valid & (lower >= target))
    if ok.size == 0:
        return TierCalibration(tier, n, False, None, 0.0, 0.0, 0.0)
    k = ok[-1]
    coverage = (k + 1) / n
    agreement = hits[k] / (k + 1)
    if coverage < min_coverage:
        return TierCalibration(tier, n, False, None, float(coverage), float(agreement), float(lower[k]))
    return TierCalibration(tier, n, True, float(conf[k]), float(coverage), float(agreement), float(lower[k]))


def calibrate_cascade(
    tier_probs: dict[int, np.ndarray | Callable[[np.ndarray], np.ndarray]],
    reference: np.ndarray,
    target: float,
    delta: float,
    min_coverage: float = 0.02,
) -> list[TierCalibration]:
    """Calibrate tiers in cascade order, each on the rows the cheaper tiers pass on.

    ``tier_probs[tier]`` is the tier's probabilities on every row, or a function of the row indices
    that reach it (so an expensive tier only scores those). The last tier answers whatever reaches
    it and gets no threshold. A tier that cannot reach the target is disabled and passes every row on.
    """
    tiers = sorted(tier_probs)
    pending = np.ones(len(reference), bool)
    result = []

    def probs_of(tier: int, idx: np.ndarray) -> np.ndarray:
        source = tier_probs[tier]
        return np.asarray(source(idx) if callable(source) else source[idx])

    for tier in tiers[:-1]:
        idx = np.flatnonzero(pending)
        probs = probs_of(tier, idx)
        correct = probs.argmax(axis=1) == reference[idx]
        cal = choose_threshold(probs.max(axis=1), correct, target, delta, min_coverage, tier)
        result.append(cal)
        if cal.enabled:
            pending[idx[probs.max(axis=1) >= cal.threshold]] = False
    idx = np.flatnonzero(pending)
    last = tiers[-1]
    agreement = float((probs_of(last, idx).argmax(axis=1) == reference[idx]).mean()) if idx.size else 0.0
    result.append(TierCalibration(last, int(idx.size), True, None, 1.0, agreement, 0.0))
    return result
