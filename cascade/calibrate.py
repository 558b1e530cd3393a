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
    note: str = ""  # why a tier was disabled or made the fallback, when it is not the plain threshold rule

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
    best_fallback: bool = True,
) -> list[TierCalibration]:
    """Calibrate tiers in cascade order, each on the rows the cheaper tiers pass on.

    ``tier_probs[tier]`` is the tier's probabilities on every row, or a function of the row indices
    that reach it (so an expensive tier only scores those rows, once). A tier that cannot reach the
    target is disabled and passes every row on. The **fallback** answers whatever no thresholded tier
    accepted, without a threshold: the last tier, unless ``best_fallback`` and one of the disabled tiers
    after the last thresholded one agrees with the reference more on exactly those rows. With teacher
    labels the last tier is the teacher and always stays; with gold labels a small LLM can be worse
    than the fine-tuned encoder on the hard rows, and then the encoder answers them.
    """
    tiers = sorted(tier_probs)
    n = len(reference)
    pending = np.ones(n, bool)
    scored: dict[int, np.ndarray] = {}
    result: dict[int, TierCalibration] = {}

    def probs_of(tier: int, idx: np.ndarray) -> np.ndarray:
        source = tier_probs[tier]
        if not callable(source):
            return np.asarray(source)[idx]
        if tier not in scored:
            scored[tier] = np.full((n, 0), np.nan)
        have = scored[tier]
        todo = idx if have.shape[1] == 0 else idx[np.isnan(have[idx, 0])]
        if todo.size:
            fresh = np.asarray(source(todo), dtype=np.float64)
            if have.shape[1] == 0:
                have = scored[tier] = np.full((n, fresh.shape[1]), np.nan)
            have[todo] = fresh
        return have[idx] if have.shape[1] else np.zeros((0, 0))

    for tier in tiers[:-1]:
        idx = np.flatnonzero(pending)
        probs = probs_of(tier, idx)
        correct = probs.argmax(axis=1) == reference[idx]
        cal = choose_threshold(probs.max(axis=1), correct, target, delta, min_coverage, tier)
        result[tier] = cal
        if cal.enabled:
            pending[idx[probs.max(axis=1) >= cal.threshold]] = False

    idx = np.flatnonzero(pending)
    last_thresholded = max((t for t, c in result.items() if c.enabled), default=-1)
    candidates = [t for t in tiers if t > last_thresholded] if best_fallback else [tiers[-1]]

    def agreement(tier: int) -> float:
        return float((probs_of(tier, idx).argmax(axis=1) == reference[idx]).mean()) if idx.size else 0.0

    scores = {t: agreement(t) for t in candidates}
    fallback = tiers[-1]
    for t in candidates:  # strictly better than every later candidate, the last tier included
        if all(scores[t] > scores[u] for u in candidates if u > t):
            fallback = t
            break
    for t in candidates:
        if t == fallback:
            note = "" if t == tiers[-1] else f"fallback: best agreement on the {idx.size} rows left"
            result[t] = TierCalibration(t, int(idx.size), True, None, 1.0, scores[t], 0.0, note)
        elif t > fallback:
            note = f"after the fallback; agreement {scores[t]:.3f} < {scores[fallback]:.3f} on the rows left"
            result[t] = TierCalibration(t, int(idx.size), False, None, 0.0, scores[t], 0.0, note)
    return [result[t] for t in tiers]
