"""Exports of tiers 0 and 1 (logreg, xgboost) to ONNX, checked against the source models, and the OnnxRunner they
run in (the embedder and the encoder, real MiniLM weights: tests/server/test_exports_server.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cascade.contract import EMBEDDING, EMBEDDING_DIM, PROBS
from cascade.errors import ConfigError, InvalidInput
from cascade.runtime.onnx_runner import OnnxRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- tiers 0 and 1 -------------------------------------------------------------------------------
def _embeddings(n_labels: int, rows: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(rows) % n_labels
    centers = rng.normal(size=(n_labels, EMBEDDING_DIM))
    X = centers[y] * 0.3 + rng.normal(size=(rows, EMBEDDING_DIM))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), y


@pytest.mark.parametrize("n_labels", [2, 4])
def test_logreg_export_matches_predict_proba(tmp_path: Path, n_labels: int) -> None:
    import onnx

    from cascade_export.build.tabular import check_tabular, export_logreg, train_logreg

    X, y = _embeddings(n_labels)
    model = train_logreg(X, y)
    path = export_logreg(model, tmp_path / "model.onnx")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == [EMBEDDING.name]
    assert [o.name for o in graph.output] == [PROBS.name]
    assert check_tabular(model, path, X) <= 1e-5
    runner = OnnxRunner(tmp_path)
    assert not runner.text_input
    assert runner.run(X[:3]).shape == (3, n_labels)
    assert runner.run(np.zeros((0, EMBEDDING_DIM), dtype=np.float32)).shape == (0, n_labels)
    with pytest.raises(InvalidInput):
        runner.run(np.zeros((2, EMBEDDING_DIM + 1), dtype=np.float32))


@pytest.mark.parametrize("n_labels", [2, 4])
def test_xgboost_export_matches_predict_proba(tmp_path: Path, n_labels: int) -> None:
    import onnx

    from cascade_export.build.tabular import check_tabular, export_xgboost, train_xgboost

    X, y = _embeddings(n_labels, seed=1)
    model = train_xgboost(X, y, n_estimators=20)
    path = export_xgboost(model, tmp_path / "model.onnx")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == [EMBEDDING.name]
    assert [o.name for o in graph.output] == [PROBS.name]
    assert check_tabular(model, path, X) <= 1e-5
    out = OnnxRunner(tmp_path).run(X[:5])
    assert out.shape == (5, n_labels)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert OnnxRunner(tmp_path).run(X[:0]).shape == (0, n_labels)
    # The booster's JSON beside it (what the GPU profile's FIL backend serves) is the same model.
    import xgboost

    from cascade.repository.writer import XGBOOST_JSON

    booster = xgboost.Booster(model_file=str(tmp_path / XGBOOST_JSON))
    margin = booster.predict(xgboost.DMatrix(X[:5]))
    probs = np.stack([1 - margin, margin], axis=1) if margin.ndim == 1 else margin
    np.testing.assert_allclose(probs, out, atol=1e-5)


@pytest.mark.parametrize("n_labels", [2, 4])
@pytest.mark.parametrize("device", [None, "cpu"], ids=["numpy", "torch"])
def test_linear_model_matches_onnx_runtime_on_numpy_and_torch(tmp_path: Path, n_labels: int, device) -> None:
    """The logreg tier as array-API ops (the gate runs it on its GPU in the GPU profile) equals ONNX Runtime."""
    from cascade.gate.arrays import Placement, host
    from cascade.runtime.onnx_runner import LinearModel
    from cascade_export.build.tabular import export_logreg, train_logreg

    X, y = _embeddings(n_labels, seed=2)
    path = export_logreg(train_logreg(X, y), tmp_path / "model.onnx")
    at = Placement(device)
    assert (tmp_path / LinearModel.FILE).is_file()  # written by the export, read without the onnx package
    for model in (LinearModel.from_onnx(path), LinearModel.load(tmp_path)):
        got = model.predict_proba(at.asarray(X), at)
        assert Placement.of(got).device == device
        np.testing.assert_allclose(host(got), OnnxRunner(tmp_path).run(X), atol=2e-6)


def test_linear_model_refuses_other_graphs(tmp_path: Path) -> None:
    from cascade.runtime.onnx_runner import LinearModel
    from cascade_export.build.tabular import export_xgboost, train_xgboost

    X, y = _embeddings(2, seed=3)
    path = export_xgboost(train_xgboost(X, y, n_estimators=5), tmp_path / "model.onnx")
    with pytest.raises(ConfigError, match="not a linear classifier"):
        LinearModel.from_onnx(path)


def test_tabular_rejects_labels_outside_0_to_n(tmp_path: Path) -> None:
    from cascade_export.build.tabular import train_logreg

    X, y = _embeddings(2)
    with pytest.raises(InvalidInput):
        train_logreg(X, y + 1)
