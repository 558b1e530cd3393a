"""Tier 0's C is chosen by cross-validated log loss (``tabular.choose_c``), not left at sklearn's default."""

import numpy as np
import pytest

from cascade.errors import InvalidInput
from cascade_export.build import tabular


def _linear(rows, dim, scale, seed=0, classes=2):
    """Rows whose labels follow a linear model with logits scaled by ``scale``: large -> nearly separable,
    small -> noisy labels that a weakly regularised fit over-fits."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, dim)).astype(np.float32)
    w = rng.normal(size=(dim, classes)) / np.sqrt(dim)
    logits = scale * (X @ w)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(classes, p=row) for row in p])
    return X, y, p


def test_clean_data_gets_a_weak_penalty_and_noisy_data_a_strong_one():
    X, y, _ = _linear(600, 8, scale=40.0)
    assert tabular.choose_c(X, y) == max(tabular.LOGREG_CS)
    X, y, _ = _linear(120, 200, scale=0.5)
    assert tabular.choose_c(X, y) <= 0.3


def test_the_chosen_c_lowers_held_out_log_loss_against_the_default():
    X, y, p = _linear(900, 64, scale=6.0, classes=3)
    train, test = slice(0, 300), slice(300, None)
    c = tabular.choose_c(X[train], y[train], p[train])
    assert c != tabular.LOGREG_DEFAULT_C

    def loss(model):
        return -(p[test] * np.log(model.predict_proba(X[test]))).sum(1).mean()

    chosen = tabular.train_logreg(X[train], y[train], probs=p[train])
    default = tabular.train_logreg(X[train], y[train], probs=p[train], c=tabular.LOGREG_DEFAULT_C)
    assert chosen.C == c and default.C == tabular.LOGREG_DEFAULT_C
    assert loss(chosen) < loss(default)


def test_too_few_rows_of_a_label_to_cross_validate_fall_back_to_the_default():
    X, y, _ = _linear(60, 4, scale=5.0)
    y[:] = 0
    y[:2] = 1  # 2 rows of label 1 < 3 folds
    assert tabular.choose_c(X, y) == tabular.LOGREG_DEFAULT_C
    assert tabular.train_logreg(X, y).C == tabular.LOGREG_DEFAULT_C
    assert tabular.choose_c(X[:2], np.array([0, 1])) == tabular.LOGREG_DEFAULT_C


def test_the_choice_is_deterministic():
    X, y, p = _linear(300, 16, scale=3.0, classes=4)
    assert tabular.choose_c(X, y, p) == tabular.choose_c(X, y, p)


@pytest.mark.parametrize("c", [0.1, 30.0])
def test_an_explicit_c_is_used_as_given(c):
    X, y, _ = _linear(200, 8, scale=3.0)
    assert tabular.train_logreg(X, y, c=c).C == c


def test_bad_soft_labels_are_refused_before_any_fit():
    X, y, p = _linear(90, 8, scale=3.0)
    for bad in (p[:50], np.full_like(p, np.nan), -p):
        with pytest.raises(InvalidInput, match="soft labels"):
            tabular.train_logreg(X, y, probs=bad)
