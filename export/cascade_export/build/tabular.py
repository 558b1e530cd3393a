"""Tiers 0 and 1 over sentence embeddings: logistic regression and XGBoost, exported to ONNX.

Both graphs take EMBEDDING (FP32 [N, the embedder's width]) and have exactly one output, PROBS
(FP32 [N, n_labels]); the converters' label output is removed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cascade.contract import EMBEDDING, PROBS
from cascade.errors import InvalidInput
from cascade.repository.writer import XGBOOST_JSON

#: Opset of the tabular graphs (main domain); ai.onnx.ml follows the converters' choice.
TARGET_OPSET = 15


def _check_xy(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    if X.ndim != 2 or len(X) != len(y):
        raise InvalidInput(f"X must be [N, D] with N == len(y), got {list(X.shape)} and {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise InvalidInput(f"labels must be integers 0..n-1, got dtype {y.dtype}")
    classes = np.unique(y)
    if len(classes) < 2 or not np.array_equal(classes, np.arange(len(classes))):
        raise InvalidInput(f"labels must cover 0..n-1 (n >= 2), got {classes.tolist()}")
    return X, y.astype(np.int64)


#: Soft labels: a row's copy for a label whose teacher probability is below this is left out (it weighs nothing).
SOFT_MIN_WEIGHT = 0.01


def soft_rows(X: Any, probs: Any, min_weight: float = SOFT_MIN_WEIGHT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft labels as weighted rows: each row once per label, weighted by the teacher's probability of that label
    (copies under ``min_weight`` dropped). A weighted fit on them minimises the cross-entropy against the
    teacher's distribution, which a fit on its argmax does not see."""
    X = np.asarray(X, dtype=np.float32)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(X) or not np.all(np.isfinite(probs)) or (probs < 0).any():
        raise InvalidInput(f"soft labels must be finite, non-negative [{len(X)}, k], got {list(probs.shape)}")
    probs = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
    rows, labels = np.nonzero(probs >= min_weight)
    return X[rows], labels.astype(np.int64), probs[rows, labels]


#: Tier 0's regularisation strength C is chosen from this grid by cross-validated log loss on the training rows.
LOGREG_CS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
LOGREG_CV_FOLDS = 3
#: sklearn's default, used when a label has too few rows to cross-validate.
LOGREG_DEFAULT_C = 1.0


def _fit_logreg(X: np.ndarray, y: np.ndarray, probs: Any, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=1000)
    if probs is None:
        return model.fit(X, y)
    Xs, ys, ws = soft_rows(X, probs)
    return model.fit(Xs, ys, sample_weight=ws)


def choose_c(
    X: Any, y: Any, probs: Any = None, cs: tuple[float, ...] = LOGREG_CS, folds: int = LOGREG_CV_FOLDS
) -> float:
    """The C in ``cs`` whose fits have the least cross-entropy on held-out folds, against the teacher's
    probabilities when given (else its labels). Folds split rows, not soft copies, stratified by label; ties go
    to the smaller C. ``LOGREG_DEFAULT_C`` when a label has fewer than ``folds`` rows."""
    from sklearn.model_selection import StratifiedKFold

    X, y = _check_xy(X, y)
    if probs is not None:
        soft_rows(X, probs)  # bad soft labels: InvalidInput before any fit
    if np.bincount(y).min() < folds:
        return LOGREG_DEFAULT_C
    probs = None if probs is None else np.asarray(probs, dtype=np.float64)
    target = np.eye(int(y.max()) + 1)[y] if probs is None else probs
    target = target / np.maximum(target.sum(axis=1, keepdims=True), 1e-12)
    loss = np.zeros(len(cs))
    for train, held in StratifiedKFold(folds, shuffle=True, random_state=0).split(X, y):
        fold_probs = None if probs is None else probs[train]
        for i, c in enumerate(cs):
            p = _fit_logreg(X[train], y[train], fold_probs, c).predict_proba(X[held])
            loss[i] -= (target[held] * np.log(np.clip(p, 1e-12, 1.0))).sum()
    return float(cs[int(np.argmin(loss))])


def train_logreg(X: Any, y: Any, probs: Any = None, c: float | None = None) -> Any:
    """sklearn ``LogisticRegression`` (``max_iter=1000``) with C chosen by :func:`choose_c` unless ``c`` is given;
    with ``probs`` (the teacher's probabilities), fitted on the soft labels (:func:`soft_rows`)."""
    X, y = _check_xy(X, y)
    if c is None:
        c = choose_c(X, y, probs)
    return _fit_logreg(X, y, probs, c)


def train_xgboost(X: Any, y: Any, seed: int = 0, n_estimators: int = 200, max_depth: int = 4, probs: Any = None) -> Any:
    """A modest ``XGBClassifier`` (200 trees of depth 4 by default, hist, 2 threads); with ``probs``, fitted on
    the soft labels (:func:`soft_rows`)."""
    from xgboost import XGBClassifier

    X, y = _check_xy(X, y)
    model = XGBClassifier(
        n_estimators=n_estimators,
        max_depth=max_depth,
        learning_rate=0.1,
        tree_method="hist",
        n_jobs=2,
        random_state=seed,
    )
    if probs is None:
        return model.fit(X, y)
    Xs, ys, ws = soft_rows(X, probs)
    return model.fit(Xs, ys, sample_weight=ws)


def _single_output(model: Any, source: str) -> Any:
    """Keep only output ``source``, renamed PROBS, and drop the nodes nothing needs any more."""
    graph = model.graph
    names = [o.name for o in graph.output]
    if source not in names:
        raise ValueError(f"converter output {source!r} not found in {names}")
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == source:
                node.input[i] = PROBS.name
        for i, name in enumerate(node.output):
            if name == source:
                node.output[i] = PROBS.name
    keep = next(o for o in graph.output if o.name == source)
    keep.name = PROBS.name
    del graph.output[:]
    graph.output.append(keep)

    needed = {PROBS.name}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    used_inits = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used_inits)
    # skl2onnx may list a domain twice: keep one entry per domain, at its highest version.
    versions: dict[str, int] = {}
    for entry in model.opset_import:
        versions[entry.domain] = max(entry.version, versions.get(entry.domain, 0))
    del model.opset_import[:]
    for domain, version in versions.items():
        model.opset_import.add(domain=domain, version=version)
    return model


def _probability_output(model: Any) -> str:
    names = [o.name for o in model.graph.output]
    for name in ("probabilities", "output_probability"):
        if name in names:
            return name
    if len(names) == 2:
        return names[1]
    raise ValueError(f"cannot tell the probability output among {names}")


def _save(model: Any, path: Path) -> Path:
    import onnx

    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def export_logreg(model: Any, path: Path) -> Path:
    """skl2onnx export of a fitted LogisticRegression: EMBEDDING -> PROBS."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    from cascade.runtime.onnx_runner import LinearModel

    onx = convert_sklearn(
        model,
        initial_types=[(EMBEDDING.name, FloatTensorType([None, int(model.n_features_in_)]))],
        options={id(model): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    saved = _save(_single_output(onx, _probability_output(onx)), path)
    LinearModel.from_onnx(saved).save(saved.parent)  # the GPU gate runs this tier as torch ops from it
    return saved


def export_xgboost(model: Any, path: Path) -> Path:
    """onnxmltools export of a fitted XGBClassifier: EMBEDDING -> PROBS."""
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    onx = convert_xgboost(
        model,
        initial_types=[(EMBEDDING.name, FloatTensorType([None, int(model.n_features_in_)]))],
        target_opset=TARGET_OPSET,
    )
    saved = _save(_single_output(onx, _probability_output(onx)), path)
    # The booster itself too: the GPU profile serves it with Triton's FIL backend (cascade.repository.gpu_profile).
    model.get_booster().save_model(str(saved.parent / XGBOOST_JSON))
    return saved


def check_tabular(model: Any, path: Path, X: Any) -> float:
    """Max abs difference between the ONNX graph at ``path`` and ``model.predict_proba(X)``."""
    from cascade.runtime.onnx_runner import OnnxRunner

    path = Path(path)
    X = np.asarray(X, dtype=np.float32)
    onnx_out = OnnxRunner(path.parent, onnx_file=path.name).run(X)
    reference = np.asarray(model.predict_proba(X), dtype=np.float32)
    if onnx_out.shape != reference.shape:
        raise ValueError(f"ONNX output {onnx_out.shape} != predict_proba {reference.shape}")
    return float(np.max(np.abs(onnx_out - reference), initial=0.0))
