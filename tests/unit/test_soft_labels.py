"""Soft labels: the cheap tiers learn from the teacher's probabilities, not only its argmax."""

import numpy as np
import pytest

from cascade.errors import InvalidInput
from cascade_export.build import tabular


def _data(rows=400, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, dim)).astype(np.float32)
    margin = X[:, 0] + 0.3 * X[:, 1]
    p1 = 1 / (1 + np.exp(-1.5 * margin))  # a teacher that is unsure near the boundary
    probs = np.stack([1 - p1, p1], axis=1)
    return X, probs.argmax(1), probs


def test_soft_rows_weigh_each_label_by_the_teachers_probability():
    X = np.arange(6, dtype=np.float32).reshape(3, 2)
    probs = np.array([[0.7, 0.3], [1.0, 0.0], [0.5, 0.5]])
    Xs, ys, ws = tabular.soft_rows(X, probs)
    assert ys.tolist() == [0, 1, 0, 0, 1] and np.allclose(ws, [0.7, 0.3, 1.0, 0.5, 0.5])
    assert np.array_equal(Xs, X[[0, 0, 1, 2, 2]])
    # per row the weights sum to 1 (unnormalised input is normalised); negligible labels are dropped
    _, _, w = tabular.soft_rows(X[:1], np.array([[2.0, 0.01]]), min_weight=0.01)
    assert w.size == 1 and w[0] == pytest.approx(2 / 2.01)
    with pytest.raises(InvalidInput, match="soft labels"):
        tabular.soft_rows(X, np.array([[0.5, np.nan]] * 3))
    with pytest.raises(InvalidInput, match="soft labels"):
        tabular.soft_rows(X, np.ones((2, 2)))


@pytest.mark.parametrize("train", [tabular.train_logreg, tabular.train_xgboost])
def test_a_soft_fit_keeps_the_teachers_doubt(train):
    X, y, probs = _data()
    hard = train(X, y).predict_proba(X)
    soft = train(X, y, probs=probs).predict_proba(X)
    # Closer to the teacher's probabilities than the argmax fit, which is over-confident near the boundary.
    assert np.abs(soft - probs).mean() < np.abs(hard - probs).mean()
    assert soft.max(1).mean() < hard.max(1).mean()
    # and it still agrees with the teacher's argmax on most rows
    assert (soft.argmax(1) == y).mean() > 0.9
