"""Threshold calibration with an exact one-sided binomial (Clopper-Pearson) guarantee."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.stats import beta

from cascade.embedders import DEFAULT_EMBEDDER, EMBEDDERS
from cascade.errors import ConfigError


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
    coverage: float  # share of the reaching rows the tier accepts at that threshold (0 when it accepts none)
    agreement: float  # agreement of the accepted rows with the reference labels (disabled: the best it saw)
    lower_bound: float  # Clopper-Pearson lower bound of that agreement
    note: str = ""  # why a tier was disabled or made the fallback, when it is not the plain threshold rule

    def to_dict(self) -> dict:
        return asdict(self)


#: Candidate cut points step through coverage in this many equal steps (fixed-sequence testing, below).
GRID_STEPS = 40


@lru_cache(maxsize=64)
def sequence_start(target: float, delta: float) -> int | None:
    """Where the fixed sequence starts: the fewest accepted rows at which a cut with **half** the allowed error
    rate passes (target 0.9, delta 0.05: 76 rows; 0.95: 153). It depends on target and delta only, never on
    the labels, so the guarantee stands; and one unlucky miss among the most confident rows no longer ends
    the sequence at its first cut (starting where a cut passes only with no miss at all: 29 rows at 0.9).
    None for a target of 1 or when no count up to 10**6 qualifies."""
    if not 0 < target < 1:
        return None
    for lo, hi in ((1, 10**3), (10**3, 10**4), (10**4, 10**5), (10**5, 10**6)):  # the first block serves <= 0.99
        n = np.arange(lo, hi + 1)
        passing = np.flatnonzero(clopper_pearson_lower(n - np.floor(n * (1 - target) / 2), n, delta) >= target)
        if passing.size:
            return int(n[passing[0]])
    return None


def choose_threshold(
    confidence: np.ndarray,
    correct: np.ndarray,
    target: float,
    delta: float,
    min_coverage: float = 0.02,
    tier: int = 0,
) -> TierCalibration:
    """The lowest threshold whose accepted rows agree at >= target with confidence 1-delta.

    Accepting the rows with confidence >= t. The candidate cuts are tested in a **fixed sequence** (as in
    Learn-then-Test): from the most confident rows down, in coverage steps of 1/``GRID_STEPS``, starting
    at :func:`sequence_start` rows (or, when fewer rows reach the tier, where the bound can pass at all:
    n >= log(delta)/log(target) rows), each tested with the one-sided
    Clopper-Pearson bound at level delta; the scan stops at the first cut that fails and keeps the last
    one that passed. Scanning every cut and keeping the largest passing one would pick the luckiest of
    many tests, and the guarantee would no longer hold at 1-delta. If the kept cut accepts fewer than
    ``min_coverage`` of the rows, or none passes, the tier is disabled (threshold None): then
    ``agreement`` and ``lower_bound`` are those of its most promising cut (or of all its rows when no
    cut can be tested) and ``note`` says why.
    """
    n = len(confidence)
    if n == 0:
        return TierCalibration(tier, 0, False, None, 0.0, 0.0, 0.0, "disabled: reached by 0 rows")
    order = np.argsort(-confidence, kind="stable")
    conf = confidence[order]
    hits = np.cumsum(correct[order].astype(int))
    # A cut is only valid after the last row of a run of equal confidences.
    valid = np.flatnonzero(np.append(conf[1:] < conf[:-1], True))
    fewest = int(np.ceil(np.log(delta) / np.log(target))) if target < 1 else n + 1
    start = sequence_start(target, delta)
    start = start if start is not None and start <= n else fewest  # too few rows: start where a cut can pass
    wanted = np.unique(np.ceil(np.arange(1, GRID_STEPS + 1) / GRID_STEPS * n).astype(int))
    wanted = np.unique(np.append(wanted[wanted > start], start)) if start <= n else np.array([], int)
    # each wanted count of accepted rows, snapped up to the next valid cut (index = accepted - 1)
    cuts = np.unique(valid[np.minimum(np.searchsorted(valid, wanted - 1), valid.size - 1)])
    bounds = clopper_pearson_lower(hits[cuts], cuts + 1, delta)
    passed = np.cumprod(bounds >= target).astype(bool)  # fixed sequence: nothing after the first failure
    if not passed.any():
        if cuts.size == 0:  # too few rows to pass even if all were right: report the agreement of all rows
            need = f"need >= {fewest}" if target < 1 else "a target of 1 is never certified by a finite sample"
            bound = float(clopper_pearson_lower(hits[-1], n, delta))
            why = f"disabled: too few rows ({n}) for any cut to pass: {need}"
            return TierCalibration(tier, n, False, None, 0.0, float(hits[-1] / n), bound, why)
        i = int(np.argmax(bounds))  # the most promising cut, for the report only
        k, best = int(cuts[i]), float(bounds[i])
        why = f"no cut reaches the target {target} at confidence {1 - delta:.0%}"
        if best >= target:  # a later cut would pass, but the sequence stops at its first cut
            why = f"the first cut ({(cuts[0] + 1) / n:.1%} coverage, lower bound {bounds[0]:.3f}) fails the target"
            why += f" {target} at confidence {1 - delta:.0%} and the fixed sequence stops there"
        why = f"disabled: {why}; best lower bound {best:.3f} at {(k + 1) / n:.1%} coverage"
        return TierCalibration(tier, n, False, None, 0.0, float(hits[k] / (k + 1)), best, why)
    k, bound = int(cuts[passed][-1]), float(bounds[passed][-1])
    coverage = (k + 1) / n
    agreement = hits[k] / (k + 1)
    if coverage < min_coverage:
        why = f"disabled: accepts {coverage:.1%} < min_coverage {min_coverage:.1%}"
        return TierCalibration(tier, n, False, None, float(coverage), float(agreement), bound, why)
    return TierCalibration(tier, n, True, float(conf[k]), float(coverage), float(agreement), bound)


def agreement_curve(confidence: np.ndarray, correct: np.ndarray, delta: float, points: int = 200) -> dict:
    """Agreement (and its lower bound) of the accepted rows against coverage, as the threshold falls:
    at most ``points`` points, for the calibration plot and ``calibration.json``."""
    n = len(confidence)
    if n == 0:
        return {"coverage": [], "agreement": [], "lower_bound": [], "threshold": []}
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order].astype(int))
    accepted = np.arange(1, n + 1)
    keep = np.unique(np.linspace(0, n - 1, min(points, n)).round().astype(int))
    lower = clopper_pearson_lower(hits[keep], accepted[keep], delta)
    return {
        "coverage": (accepted[keep] / n).round(4).tolist(),
        "agreement": (hits[keep] / accepted[keep]).round(4).tolist(),
        "lower_bound": np.round(lower, 4).tolist(),
        "threshold": np.round(confidence[order][keep], 4).tolist(),
    }


def calibrate_cascade(
    tier_probs: dict[int, np.ndarray | Callable[[np.ndarray], np.ndarray]],
    reference: np.ndarray,
    target: float,
    delta: float,
    min_coverage: float = 0.02,
    best_fallback: bool = True,
    curves: dict[int, dict] | None = None,
) -> list[TierCalibration]:
    """Calibrate tiers in cascade order, each on the rows the cheaper tiers pass on.

    ``tier_probs[tier]`` is the tier's probabilities on every row, or a function of the row indices
    that reach it (so an expensive tier only scores those rows, once); ``curves``, when given, receives
    each thresholded tier's :func:`agreement_curve`. A tier that cannot reach the
    target is disabled and passes every row on. The **fallback** answers whatever no thresholded tier
    accepted, without a threshold: the last tier, unless ``best_fallback`` and one of the disabled tiers
    after the last thresholded one agrees with the reference more on exactly those rows. With teacher
    labels the last tier is the teacher and always stays; with gold labels a small LLM can be worse
    than the fine-tuned encoder on the hard rows, and then the encoder answers them.
    """
    tiers = sorted(tier_probs)
    if not tiers:
        raise ConfigError("no tiers to calibrate")
    n = len(reference)
    if unfit := [t for t in tiers if not callable(tier_probs[t]) and np.shape(tier_probs[t])[:1] != (n,)]:
        raise ConfigError(f"tiers {unfit}: their probabilities do not have one row per reference label ({n})")
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
        probs = probs_of(tier, idx) if idx.size else np.zeros((0, 1))  # reached by no row: nothing to score
        correct = probs.argmax(axis=1) == reference[idx]
        cal = choose_threshold(probs.max(axis=1), correct, target, delta, min_coverage, tier)
        result[tier] = cal
        if curves is not None:  # filled for the caller: agreement vs coverage on the rows reaching this tier
            curves[tier] = agreement_curve(probs.max(axis=1), correct, delta)
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
            note = note if idx.size else "fallback: reached by 0 rows (the earlier tiers accept every row)"
            result[t] = TierCalibration(t, int(idx.size), True, None, 1.0, scores[t], 0.0, note)
        elif t > fallback:
            note = f"after the fallback; agreement {scores[t]:.3f} < {scores[fallback]:.3f} on the rows left"
            result[t] = TierCalibration(t, int(idx.size), False, None, 0.0, scores[t], 0.0, note)
    return [result[t] for t in tiers]


def tier_mix(calibration: list[TierCalibration]) -> dict[int, float]:
    """Share of the calibration rows each enabled tier answers, in cascade order."""
    total = calibration[0].rows if calibration else 0
    mix = {}
    for c in calibration:
        if c.enabled and total:
            mix[c.tier] = c.rows * c.coverage / total
    return mix


def plot_calibration(
    calibration: list[TierCalibration], curves: dict[int, dict], target: float, path: str | Path, title: str = ""
) -> Path:
    """PNG: agreement vs coverage per tier (the chosen thresholds marked, the target dashed) and the tier mix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cascade import contract

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    for c in calibration:
        curve = curves.get(c.tier)
        if not curve or not curve["coverage"]:
            continue
        name = contract.TIER_NAMES[c.tier]
        (line,) = ax.plot(curve["coverage"], curve["agreement"], label=f"{name} ({c.rows} rows)")
        ax.plot(curve["coverage"], curve["lower_bound"], color=line.get_color(), linestyle=":", linewidth=1)
        if c.enabled and c.threshold is not None:
            ax.plot([c.coverage], [c.agreement], "o", color=line.get_color())
            ax.annotate(f"t={c.threshold:.2f}", (c.coverage, c.agreement), textcoords="offset points", xytext=(4, 4))
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target}")
    ax.set_xlabel("coverage (share of the rows reaching the tier that it accepts)")
    ax.set_ylabel("agreement with the reference (dotted: lower bound)")
    ax.set_ylim(0.4, 1.01)
    ax.legend(loc="lower left", fontsize=8)
    mix = tier_mix(calibration)
    names = [contract.TIER_NAMES[t] for t in mix]
    bx.bar(names, [100 * v for v in mix.values()], color="tab:blue")
    bx.set_ylabel("% of calibration rows answered")
    bx.set_title("tier mix")
    for i, v in enumerate(mix.values()):
        bx.annotate(f"{100 * v:.1f}%", (i, 100 * v), ha="center", va="bottom", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: Per-row CPU cost (ms) of the LLM tiers on the CPU profile (2 cores), at the server's 1 thread per instance, on
#: SST-2: ``llm_small`` (SmolLM2-135M) 116 ms (bench/results/threads-20261129-130102.json), ``llm_large``
#: (Qwen2.5-Coder-1.5B) 723 ms (bench/results/llm-20261129-141425.json; docs/llm.md).
LLM_COST_MS = {3: 116.0, 4: 723.0}
#: LR and XGBoost over an embedding already made: estimates, well under 1% of the embedding's cost.
HEAD_COST_MS = {0: 0.1, 1: 0.2}


def default_costs(embedding_ms: float) -> dict[int, float]:
    """Per-row cost of each tier (ms) for the budget mode and the build report: tier 0 pays the repository's
    embedder (``embedders.Embedder.ms_per_row``), tier 1 reuses that embedding, the encoder runs a copy of the
    embedder's backbone (about the same cost), the LLM tiers as measured. Override with your deployment's."""
    return {0: embedding_ms + HEAD_COST_MS[0], 1: HEAD_COST_MS[1], 2: embedding_ms, **LLM_COST_MS}


#: The costs with the default embedder.
DEFAULT_COST_MS = default_costs(EMBEDDERS[DEFAULT_EMBEDDER].ms_per_row)


def expected_cost(calibration: list[TierCalibration], costs: dict[int, float]) -> float:
    """Expected cost per row: every enabled tier costs ``costs[tier]`` for each row that reaches it."""
    total = calibration[0].rows if calibration else 0
    if not total:
        return 0.0
    return sum(costs[c.tier] * c.rows / total for c in calibration if c.enabled)


def calibrate_for_budget(
    tier_probs: dict[int, np.ndarray | Callable[[np.ndarray], np.ndarray]],
    reference: np.ndarray,
    budget: float,
    delta: float,
    costs: dict[int, float] | None = None,
    min_coverage: float = 0.02,
    targets: Sequence[float] = tuple(np.round(np.arange(0.99, 0.495, -0.01), 2)),
    curves: dict[int, dict] | None = None,
) -> tuple[float, list[TierCalibration]]:
    """Budget mode: the highest agreement target (each tier's guarantee as in :func:`calibrate_cascade`)
    whose cascade costs at most ``budget`` per row on the calibration rows. A higher target escalates
    more rows, so this maximizes agreement subject to the expected cost. Expensive tiers score each
    row at most once across all the targets tried."""
    costs = DEFAULT_COST_MS if costs is None else costs
    missing = [t for t in tier_probs if t not in costs]
    if missing:
        raise ConfigError(f"no cost given for tiers {missing}")
    memo = {t: _memoized(p, len(reference)) if callable(p) else p for t, p in tier_probs.items()}
    for target in targets:
        trial: dict[int, dict] = {}
        cal = calibrate_cascade(memo, reference, float(target), delta, min_coverage, curves=trial)
        if expected_cost(cal, costs) <= budget:
            if curves is not None:
                curves.update(trial)
            return float(target), cal
    cheapest = calibrate_cascade(memo, reference, float(targets[-1]), delta, min_coverage)
    raise ConfigError(
        f"no target >= {targets[-1]} fits a budget of {budget} per row: the cheapest cascade costs "
        f"{expected_cost(cheapest, costs):.1f} (its last tier answers every row that reaches it)"
    )


def _memoized(source: Callable[[np.ndarray], np.ndarray], n: int) -> Callable[[np.ndarray], np.ndarray]:
    have: dict[int, np.ndarray] = {}

    def probs(idx: np.ndarray) -> np.ndarray:
        todo = np.array([i for i in idx if int(i) not in have], dtype=np.int64)
        if todo.size:
            for i, row in zip(todo, np.asarray(source(todo)), strict=True):
                have[int(i)] = row
        return np.array([have[int(i)] for i in idx]) if len(idx) else np.asarray(source(idx))

    return probs
