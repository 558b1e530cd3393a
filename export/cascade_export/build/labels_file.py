"""Reading ``cascade label``'s ``labelled.csv`` for a build: the texts and hard labels with the ``labels.json``
summary, the teacher's soft labels, and which rows came from the uniform sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cascade.errors import ConfigError
from cascade.tasks import TaskSpec
from cascade_export.build.labelled import ACTIVE, GOLD, PROB_PREFIX, SAMPLE_COLUMN, UNIFORM, WEIGHT_COLUMN


def read_labelled(path: str | Path, task: TaskSpec) -> tuple[list[str], np.ndarray, dict]:
    """``labelled.csv`` (id, text, label) and the ``labels.json`` summary written beside it."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"labels file {path} not found: run `cascade label` first")
    frame = pd.read_csv(path, keep_default_na=False)
    if not {"text", "label"} <= set(frame.columns):
        raise ConfigError(f"{path}: needs columns text and label (columns: {list(frame.columns)})")
    labels = frame["label"].to_numpy()
    if len(frame) == 0 or labels.min() < 0 or labels.max() >= task.n_labels:
        raise ConfigError(f"{path}: labels must be indices 0-{task.n_labels - 1} of task {task.name}")
    summary_path = path.with_name("labels.json")
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if summary.get("task", task.name) != task.name:
        raise ConfigError(f"{path} holds labels of task {summary['task']!r}, not {task.name!r}")
    return frame["text"].astype(str).tolist(), labels.astype(np.int64), summary


def read_soft_labels(
    path: str | Path, labels: np.ndarray, n_labels: int, fill_missing: bool = True
) -> np.ndarray | None:
    """The teacher's probabilities in ``labelled.csv`` (``prob_<j>`` columns), [n, n_labels]; a row without them
    (a column teacher, an older cache) gets its hard label as a one-hot row (NaN with ``fill_missing=False``).
    None when the file has none."""
    import pandas as pd

    columns = [f"{PROB_PREFIX}{j}" for j in range(n_labels)]
    frame = pd.read_csv(path)
    if not set(columns) <= set(frame.columns):
        return None
    probs = frame[columns].to_numpy(dtype=np.float32)
    missing = ~np.isfinite(probs).all(axis=1)
    if not fill_missing:
        probs[missing] = np.nan
        return probs
    probs[missing] = np.eye(n_labels, dtype=np.float32)[labels[missing]]
    return probs


def uniform_rows(path: str | Path) -> np.ndarray:
    """Which rows of ``labelled.csv`` came from its uniform sample (``sample`` column; a file without it
    predates active sampling: all uniform). Only these may calibrate (README, "cascade label"); active and gold
    rows train."""
    import pandas as pd

    frame = pd.read_csv(path, keep_default_na=False)
    if SAMPLE_COLUMN not in frame.columns:
        return np.ones(len(frame), dtype=bool)
    kinds = frame[SAMPLE_COLUMN].astype(str)
    if not kinds.isin([UNIFORM, ACTIVE, GOLD]).all():
        raise ConfigError(f"{path}: column {SAMPLE_COLUMN!r} must hold {UNIFORM!r}, {ACTIVE!r} or {GOLD!r}")
    return (kinds == UNIFORM).to_numpy()


def row_weights(path: str | Path) -> np.ndarray:
    """How many times each row of ``labelled.csv`` counts in training (``weight`` column, whole numbers >= 1; 1 each
    without it)."""
    import pandas as pd

    frame = pd.read_csv(path, keep_default_na=False)
    if WEIGHT_COLUMN not in frame.columns:
        return np.ones(len(frame), dtype=np.int64)
    weights = pd.to_numeric(frame[WEIGHT_COLUMN], errors="coerce").to_numpy()
    if not (np.isfinite(weights) & (weights >= 1) & (weights == np.round(weights))).all():
        raise ConfigError(f"{path}: column {WEIGHT_COLUMN!r} must hold whole numbers >= 1")
    return weights.astype(np.int64)
