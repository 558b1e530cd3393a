"""Calibrating a cascade: each tier on the rows that reach it, the fallback, budget mode, awkward samples."""

import numpy as np
import pytest

from cascade.calibrate import calibrate_cascade


def test_cascade_calibrates_each_tier_on_the_rows_it_receives():
    rng = np.random.default_rng(1)
    n = 3000
    truth = rng.integers(0, 2, n)

    def tier(noise):
        conf = rng.uniform(0.5, 1.0, n)
        right = rng.uniform(size=n) < conf ** (1 / noise)
        pred = np.where(right, truth, 1 - truth)
        probs = np.zeros((n, 2))
        probs[np.arange(n), pred] = conf
        probs[np.arange(n), 1 - pred] = 1 - conf
        return probs

    cal = calibrate_cascade({0: tier(1.0), 1: tier(2.0)}, truth, target=0.9, delta=0.05)
    assert [c.tier for c in cal] == [0, 1]
    assert cal[0].rows == n and cal[0].enabled
    assert cal[1].rows == n - round(cal[0].coverage * n)
    assert cal[1].threshold is None and cal[1].enabled  # the last tier answers the rest


def test_expensive_tiers_score_only_the_rows_that_reach_them():
    reference = np.array([0, 1, 0, 1] * 50)
    sure = np.eye(2)[reference] * 0.98 + 0.01  # right and confident on every row
    seen = []

    def llm(idx):
        seen.append(idx)
        return np.eye(2)[reference[idx]]

    cal = calibrate_cascade({0: sure, 3: llm}, reference, target=0.9, delta=0.05)
    assert cal[0].enabled and cal[0].coverage == 1.0
    assert seen == []  # nothing left for the LLM: it is never called


def hard_rows_case():
    """Tier 0 is sure and right on the even rows and unsure on the odd ones; on those, tier 2 is right
    on 80% and tier 4 (an LLM, scored lazily) on 60%, neither confident enough for a 0.95 target."""
    rng = np.random.default_rng(1)
    n = 400
    reference = rng.integers(0, 2, n)
    hard = np.arange(n) % 2 == 1

    def answers(acc, conf):
        right = rng.uniform(size=n) < acc
        pred = np.where(right, reference, 1 - reference)
        probs = np.full((n, 2), 1 - conf)
        probs[np.arange(n), pred] = conf
        return probs

    tier0 = np.where(hard[:, None], 0.5, np.eye(2)[reference] * 0.98 + 0.01)
    calls = []
    llm_probs = answers(0.6, 0.7)

    def llm(idx):
        calls.append(idx)
        return llm_probs[idx]

    return {0: tier0, 2: answers(0.8, 0.7), 4: llm}, reference, calls


def test_the_most_accurate_tier_on_the_rows_left_becomes_the_fallback():
    probs, reference, calls = hard_rows_case()
    cal = {c.tier: c for c in calibrate_cascade(probs, reference, target=0.95, delta=0.05)}
    assert cal[0].enabled and cal[0].threshold is not None
    assert cal[2].enabled and cal[2].threshold is None and "fallback" in cal[2].note
    assert not cal[4].enabled and cal[4].agreement < cal[2].agreement
    assert sum(len(c) for c in calls) == cal[4].rows  # the LLM scored each row that reached it once


def test_without_best_fallback_the_last_tier_answers_the_rest():
    probs, reference, _ = hard_rows_case()
    cal = {c.tier: c for c in calibrate_cascade(probs, reference, 0.95, 0.05, best_fallback=False)}
    assert not cal[2].enabled and cal[4].enabled and cal[4].threshold is None


def test_a_teacher_as_last_tier_is_never_displaced():
    probs, reference, _ = hard_rows_case()
    probs[4] = np.eye(2)[reference]  # the reference labels come from tier 4 itself
    cal = {c.tier: c for c in calibrate_cascade(probs, reference, target=0.95, delta=0.05)}
    assert cal[4].enabled and cal[4].agreement == 1.0 and not cal[2].enabled


def test_curves_mix_and_plot(tmp_path):
    from cascade.calibrate import agreement_curve, plot_calibration, tier_mix

    probs, reference, _ = hard_rows_case()
    curves = {}
    cal = calibrate_cascade(probs, reference, target=0.95, delta=0.05, curves=curves)
    assert set(curves) == {0, 2}  # the thresholded tiers (4 is scored but after the fallback)
    curve = curves[0]
    assert curve["coverage"][-1] == 1.0 and np.all(np.diff(curve["coverage"]) > 0)
    assert all(lb <= a for lb, a in zip(curve["lower_bound"], curve["agreement"], strict=True))
    mix = tier_mix(cal)
    assert set(mix) == {0, 2} and abs(sum(mix.values()) - 1) < 1e-9
    path = plot_calibration(cal, curves, 0.95, tmp_path / "calibration.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert agreement_curve(np.array([]), np.array([]), 0.05)["coverage"] == []


def test_resampled_splits_check_the_guarantee_on_unseen_rows():
    from cascade.bench.distill import evaluate_splits

    rng = np.random.default_rng(3)
    n = 2000
    teacher = rng.integers(0, 2, n)
    gold = np.where(rng.uniform(size=n) < 0.9, teacher, 1 - teacher)
    conf = rng.uniform(0.5, 1.0, n)
    right = rng.uniform(size=n) < conf  # calibrated: a row at confidence c is right with probability c
    pred = np.where(right, teacher, 1 - teacher)
    probs = np.zeros((n, 2))
    probs[np.arange(n), pred] = conf
    probs[np.arange(n), 1 - pred] = 1 - conf
    result = evaluate_splits({0: probs}, teacher, gold, np.arange(n), splits=5, target=0.9, delta=0.05, seed=0)
    s = result["summary"]
    assert s["splits"] == 5 and s["guarantee_held_in"] >= 4
    assert 0.1 < s["cheap_share"] < 0.6 and s["cheap_agreement"] >= 0.9
    assert abs(s["cheap_share"] + s["llm_share"] - 1) < 1e-9  # the teacher answers the rest
    assert s["tiers"]["llm_large"]["agreement"] == 1.0


def test_budget_mode_picks_the_highest_target_that_fits():
    from cascade.calibrate import DEFAULT_COST_MS, calibrate_for_budget, expected_cost
    from cascade.errors import ConfigError

    probs, reference, calls = hard_rows_case()
    costs = {0: 1.0, 2: 5.0, 4: 100.0}
    everything = expected_cost(calibrate_cascade(probs, reference, 0.99, 0.05), costs)
    calls.clear()
    target, cal = calibrate_for_budget(probs, reference, budget=everything - 1, delta=0.05, costs=costs)
    assert sum(len(c) for c in calls) <= len(reference)  # across all targets tried, each row scored once
    assert expected_cost(cal, costs) <= everything - 1 and target < 0.99
    higher = calibrate_cascade(probs, reference, round(target + 0.01, 2), 0.05)
    assert expected_cost(higher, costs) > everything - 1  # one step more agreement does not fit
    with pytest.raises(ConfigError, match="fits a budget"):
        calibrate_for_budget(probs, reference, budget=0.5, delta=0.05, costs=costs)
    with pytest.raises(ConfigError, match="no cost given"):
        calibrate_for_budget(probs, reference, budget=10, delta=0.05, costs={0: 1.0})
    assert set(DEFAULT_COST_MS) == {0, 1, 2, 3, 4}


def source(probs, kind, calls=None):
    """The tier's probabilities as an array, or as a function of the row indices (as the LLM tiers are)."""
    if kind == "array":
        return probs

    def score(idx):
        if calls is not None:
            calls.append(idx)
        return probs[idx]

    return score


def teacher(reference, n_labels):
    return np.eye(n_labels)[reference]


@pytest.mark.parametrize("kind", ["array", "callable"])
@pytest.mark.parametrize("best_fallback", [True, False])
def test_when_tier_0_accepts_every_row_the_later_tiers_reach_none(kind, best_fallback):
    from cascade.calibrate import expected_cost, tier_mix

    reference = np.array([0, 1, 1] * 100)
    sure = np.eye(2)[reference] * 0.98 + 0.01
    calls = []
    probs = {0: sure, 2: source(sure, kind, calls), 4: source(teacher(reference, 2), kind, calls)}
    curves = {}
    cal = calibrate_cascade(probs, reference, 0.9, 0.05, best_fallback=best_fallback, curves=curves)
    cal = {c.tier: c for c in cal}
    assert cal[0].enabled and cal[0].coverage == 1.0 and cal[0].rows == 300
    assert cal[2].rows == 0 and not cal[2].enabled and cal[2].note == "disabled: reached by 0 rows"
    assert cal[4].rows == 0 and cal[4].enabled and cal[4].threshold is None  # still the fallback
    assert cal[4].note.startswith("fallback: reached by 0 rows")
    assert calls == [] and curves[2]["coverage"] == []
    assert tier_mix(list(cal.values())) == {0: 1.0, 4: 0.0}  # the fallback answers none, tier 2 is out
    assert expected_cost(list(cal.values()), {0: 1.0, 2: 5.0, 4: 100.0}) == 1.0


@pytest.mark.parametrize("kind", ["array", "callable"])
def test_budget_mode_when_tier_0_accepts_every_row(kind):
    from cascade.calibrate import calibrate_for_budget

    reference = np.array([0, 1, 1] * 200)
    probs = {0: np.eye(2)[reference] * 0.98 + 0.01, 3: source(teacher(reference, 2), kind)}
    target, cal = calibrate_for_budget(probs, reference, budget=2.0, delta=0.05, costs={0: 1.0, 3: 99.0})
    assert target == 0.99 and cal[0].coverage == 1.0 and cal[1].rows == 0 and cal[1].enabled


@pytest.mark.parametrize("kind", ["array", "callable"])
def test_a_label_missing_from_the_calibration_sample(kind):
    """3 labels, only 0 and 1 among the reference labels: tier 0 predicts the absent label 2 on a third of
    the rows (wrong there, and unsure) and is right and sure on the rest."""
    n = 300
    reference = np.arange(n) % 2
    odd = np.arange(n) % 3 == 0
    tier0 = np.where(odd[:, None], [0.2, 0.2, 0.6], np.eye(3)[reference] * 0.97 + 0.01)
    cal = calibrate_cascade({0: tier0, 4: source(teacher(reference, 3), kind)}, reference, 0.9, 0.05)
    assert cal[0].enabled and cal[0].threshold == pytest.approx(0.98) and cal[0].coverage == pytest.approx(2 / 3)
    assert cal[1].enabled and cal[1].rows == odd.sum() and cal[1].agreement == 1.0


@pytest.mark.parametrize("kind", ["array", "callable"])
def test_a_single_class_sample(kind):
    from cascade.calibrate import tier_mix

    rng = np.random.default_rng(5)
    n = 400
    reference = np.ones(n, int)
    conf = rng.uniform(0.5, 1.0, n)
    sure = conf > 0.75  # right where sure; wrong (label 0 at 0.55) elsewhere
    tier0 = np.where(sure[:, None], np.c_[1 - conf, conf], [0.55, 0.45])
    cal = calibrate_cascade({0: tier0, 2: source(teacher(reference, 2), kind)}, reference, 0.9, 0.05)
    assert cal[0].enabled and cal[0].threshold > 0.75 and cal[0].agreement == 1.0
    assert cal[1].enabled and cal[1].rows == (conf < cal[0].threshold).sum() and cal[1].agreement == 1.0
    assert sum(tier_mix(cal).values()) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["array", "callable"])
def test_two_rows(kind):
    from cascade.calibrate import calibrate_for_budget
    from cascade.errors import ConfigError

    reference = np.array([0, 1])
    sure = np.eye(2)[reference] * 0.98 + 0.01
    probs = {0: sure, 2: source(sure, kind), 4: source(teacher(reference, 2), kind)}
    cal = calibrate_cascade(probs, reference, 0.9, 0.05)
    assert [c.enabled for c in cal] == [False, False, True] and [c.rows for c in cal] == [2, 2, 2]
    assert cal[0].note == "disabled: too few rows (2) for any cut to pass: need >= 29" and cal[0].agreement == 1.0
    assert cal[2].threshold is None and cal[2].agreement == 1.0  # the last tier answers both rows
    costs = {0: 1.0, 2: 5.0, 4: 100.0}
    target, cal = calibrate_for_budget(probs, reference, budget=100.0, delta=0.05, costs=costs)
    assert target == 0.99 and cal[2].rows == 2 and cal[2].enabled
    with pytest.raises(ConfigError, match="the cheapest cascade costs 100.0"):
        calibrate_for_budget(probs, reference, budget=50.0, delta=0.05, costs=costs)


@pytest.mark.parametrize("kind", ["array", "callable"])
def test_77_labels(kind):
    """Tier 0 guesses (random Dirichlet probabilities); tier 2 is right and sure on two thirds of the rows."""
    from cascade.calibrate import calibrate_for_budget, expected_cost, tier_mix

    rng = np.random.default_rng(7)
    n, labels = 300, 77
    reference = rng.integers(0, labels, n)
    guess = rng.dirichlet(np.full(labels, 0.3), n)
    known = np.arange(n) % 3 != 0
    tier2 = np.where(known[:, None], np.eye(labels)[reference] * 0.95 + 0.05 / labels, guess[::-1])
    probs = {0: guess, 2: source(tier2, kind), 4: source(teacher(reference, labels), kind)}
    cal = calibrate_cascade(probs, reference, 0.9, 0.05)
    assert not cal[0].enabled and cal[0].note.startswith("disabled: no cut reaches the target 0.9")
    assert 0 <= cal[0].lower_bound <= cal[0].agreement < 0.2
    assert cal[1].enabled and cal[1].lower_bound >= 0.9 and cal[1].coverage >= 2 / 3
    assert cal[2].enabled and cal[2].rows == n - round(cal[1].coverage * n) and cal[2].agreement == 1.0
    assert tier_mix(cal) == pytest.approx({2: cal[1].coverage, 4: 1 - cal[1].coverage})
    costs = {0: 1.0, 2: 5.0, 4: 100.0}
    target, cal = calibrate_for_budget(probs, reference, budget=50.0, delta=0.05, costs=costs)
    assert target == 0.98 and expected_cost(cal, costs) == pytest.approx(5 + 100 / 3)  # 0.99 needs 299 rows


def test_no_tiers_or_misshapen_probabilities_are_config_errors():
    from cascade.errors import ConfigError

    with pytest.raises(ConfigError, match="no tiers"):
        calibrate_cascade({}, np.array([0, 1]), 0.9, 0.05)
    with pytest.raises(ConfigError, match=r"tiers \[0\]"):
        calibrate_cascade({0: np.ones((3, 2)) / 2, 4: np.eye(2)}, np.array([0, 1]), 0.9, 0.05)


def test_bench_distill_holds_out_uniform_rows_and_simulates_active_sampling():
    from cascade.bench.distill import split_pool, training_rows

    rng = np.random.default_rng(0)
    n = 1000
    uniform = np.ones(n, bool)
    uniform[::4] = False  # a quarter of the pool came from active sampling
    order = rng.permutation(n)
    candidates, held = split_pool(order, uniform, train=300, heldout=400)
    assert len(held) == 400 and uniform[held].all()  # calibration and test rows are uniform rows only
    assert not np.isin(candidates, held).any() and len(candidates) + len(held) == n
    with pytest.raises(SystemExit, match="--heldout 800"):
        split_pool(order, uniform, train=300, heldout=800)  # only 750 uniform rows
    # 1-d embeddings: tier 0 is least sure near 0, so active picks rows near the boundary; uniform takes a prefix
    emb = rng.normal(size=(n, 1))
    teacher = (emb[:, 0] > 0).astype(int)
    assert np.array_equal(training_rows("uniform", candidates, 200, emb, teacher), candidates[:200])
    active = training_rows("active", candidates, 200, emb, teacher)
    assert len(set(active)) == 200 and np.array_equal(active[:100], candidates[:100])
    picked = active[100:]
    rest = np.setdiff1d(candidates[100:], picked)
    assert np.abs(emb[picked, 0]).max() < np.median(np.abs(emb[rest, 0]))  # the rows closest to tier 0's boundary
