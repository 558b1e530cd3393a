"""One tier's threshold: the Clopper-Pearson bound and the fixed sequence of cuts (``choose_threshold``)."""

import numpy as np
import pytest
from scipy.stats import binomtest

from cascade.calibrate import choose_threshold, clopper_pearson_lower


def test_lower_bound_matches_scipy_exact_interval():
    for k, n in [(90, 100), (10, 10), (1, 50), (500, 520)]:
        expected = binomtest(k, n).proportion_ci(confidence_level=0.90, method="exact").low
        assert abs(float(clopper_pearson_lower(k, n, 0.05)) - expected) < 1e-9
    assert float(clopper_pearson_lower(0, 10, 0.05)) == 0.0


def test_threshold_keeps_the_bound_and_the_next_grid_cut_breaks_it():
    from cascade.calibrate import GRID_STEPS

    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 4000)
    correct = rng.uniform(size=4000) < conf  # calibrated: P(correct) = confidence
    cal = choose_threshold(conf, correct, target=0.9, delta=0.05)
    accepted = conf >= cal.threshold
    assert cal.enabled
    assert clopper_pearson_lower(correct[accepted].sum(), accepted.sum(), 0.05) >= 0.9
    assert abs(cal.coverage - accepted.mean()) < 1e-12
    # the next cut of the fixed sequence (one coverage step further) fails the bound: the scan stopped there
    order = np.argsort(-conf)
    k = accepted.sum() + 4000 // GRID_STEPS
    assert clopper_pearson_lower(correct[order][:k].sum(), k, 0.05) < 0.9


def test_fixed_sequence_stops_at_the_first_failure():
    """A dip in the middle ends the scan, even if a larger cut would pass again: picking the best of many
    tests is what breaks a statistical guarantee."""
    n = 1000
    conf = np.linspace(1.0, 0.5, n)
    correct = np.ones(n, bool)
    correct[200:260] = False  # 60 misses right after the first 20%
    cal = choose_threshold(conf, correct, target=0.9, delta=0.05)
    assert cal.enabled and cal.coverage <= 0.2 + 1e-9
    # a cut far beyond the dip has a passing bound: scanning everything would have taken it
    assert clopper_pearson_lower(correct[:1000].sum(), 1000, 0.05) >= 0.9


def test_too_few_rows_to_pass_disable_the_tier():
    # 0.95 at delta 0.05 needs at least 59 rows, all right, before any cut can pass
    cal = choose_threshold(np.linspace(1, 0.9, 50), np.ones(50, bool), target=0.95, delta=0.05)
    assert not cal.enabled


def test_tier_that_cannot_reach_target_is_disabled():
    conf = np.linspace(0.5, 1.0, 200)
    correct = np.arange(200) % 2 == 0  # coin flips whatever the confidence
    cal = choose_threshold(conf, correct, target=0.9, delta=0.05)
    assert not cal.enabled and cal.threshold is None


def test_disabled_tiers_report_the_best_agreement_they_saw_and_why():
    conf = np.linspace(0.5, 1.0, 200)
    coin = choose_threshold(conf, np.arange(200) % 2 == 0, target=0.9, delta=0.05)
    assert not coin.enabled and coin.threshold is None and coin.coverage == 0.0
    assert 0.4 < coin.agreement < 0.6 and 0.3 < coin.lower_bound < coin.agreement
    assert coin.note.startswith("disabled: no cut reaches the target 0.9") and "best lower bound" in coin.note
    few = choose_threshold(np.linspace(1, 0.9, 50), np.ones(50, bool), target=0.95, delta=0.05)
    assert few.agreement == 1.0 and few.lower_bound == pytest.approx(0.05 ** (1 / 50))
    assert few.note == "disabled: too few rows (50) for any cut to pass: need >= 59"
    narrow = choose_threshold(
        np.linspace(1, 0.5, 1000), np.arange(1000) < 100, target=0.9, delta=0.05, min_coverage=0.2
    )
    assert not narrow.enabled and narrow.agreement == 1.0 and narrow.lower_bound >= 0.9
    assert narrow.note == f"disabled: accepts {narrow.coverage:.1%} < min_coverage 20.0%"
    # the first cut of the fixed sequence fails, a later (luckier) one would pass: disabled, and said so
    correct = np.ones(1000, bool)
    correct[:30] = False
    dip = choose_threshold(np.linspace(1, 0.5, 1000), correct, target=0.9, delta=0.05)
    assert not dip.enabled and dip.agreement == 0.97 and "the fixed sequence stops there" in dip.note
    assert choose_threshold(np.array([]), np.array([], bool), 0.9, 0.05).note == "disabled: reached by 0 rows"


def test_one_miss_among_the_most_confident_rows_does_not_end_the_sequence():
    """The sequence starts where a cut with half the allowed error rate passes (76 rows at 0.9), not where only
    a flawless cut does (29 rows): the demo's tier 0 was disabled by one miss in its 29 most confident rows."""
    from cascade.calibrate import sequence_start

    assert sequence_start(0.9, 0.05) == 76 and sequence_start(0.95, 0.05) == 153 and sequence_start(1.0, 0.05) is None
    n = 500
    correct = np.ones(n, bool)
    correct[[3, 300, 320, 340, 360, 380, 400, 420, 440, 460, 480]] = False
    cal = choose_threshold(np.linspace(1.0, 0.5, n), correct, target=0.9, delta=0.05)
    assert cal.enabled and cal.coverage == 1.0
    assert clopper_pearson_lower(28, 29, 0.05) < 0.9  # the former first cut would have failed
    # fewer rows than the start: the sequence starts where a flawless cut can pass, as before
    few = choose_threshold(np.linspace(1.0, 0.5, 40), np.ones(40, bool), target=0.9, delta=0.05)
    assert few.enabled and few.coverage == 1.0


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("delta", [0.01, 0.05, 0.1])
def test_the_sequence_starts_at_the_fewest_rows_a_half_error_cut_passes_with(target, delta):
    from cascade.calibrate import sequence_start

    start = sequence_start(target, delta)

    def half_error_bound(n):
        return float(clopper_pearson_lower(n - np.floor(n * (1 - target) / 2), n, delta))

    assert half_error_bound(start) >= target
    assert all(half_error_bound(n) < target for n in range(1, start))
