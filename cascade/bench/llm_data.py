"""The LLM benchmark's rows (cascade.bench.llm): a task's fixed evaluation sample, rows for prompt search outside
it, and balanced few-shot examples from the train split, all read from the dataset files with fixed seeds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cascade.datasets import dataset_file, read_rows

SEED = 0


@dataclass(frozen=True)
class BenchTask:
    name: str
    dir: str
    eval_split: str  # file the evaluation sample comes from
    dev_split: str  # rows for prompt search; rows of the evaluation sample are excluded
    labels: tuple[str, ...]
    shot_words: tuple[int, int]  # few-shot examples are drawn among train rows with this many words


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """``text,label`` rows of a dataset file (Parquet or CSV, read by :func:`cascade.datasets.read_rows`)."""
    texts, labels = read_rows(dataset_file(path))
    return texts, np.array([int(v) for v in labels])


def eval_rows(task: BenchTask, data_dir: Path, n: int, split: str = "eval") -> tuple[list[str], np.ndarray]:
    """A fixed random sample (seed 0) of the evaluation split, or for ``dev`` rows outside that sample."""
    texts, labels = read_csv(data_dir / task.dir / f"{task.eval_split}.csv")
    order = np.random.default_rng(SEED).permutation(len(texts))
    if split == "dev":
        if task.dev_split == task.eval_split:
            idx = order[::-1][:n]  # from the other end of the permutation: disjoint while n + rows <= len
        else:
            dev_texts, dev_labels = read_csv(data_dir / task.dir / f"{task.dev_split}.csv")
            dev_order = np.random.default_rng(SEED + 1).permutation(len(dev_texts))[::-1][:n]
            return [dev_texts[i] for i in dev_order], dev_labels[dev_order]
    else:
        idx = order[:n]
    return [texts[i] for i in idx], labels[idx]


def few_shot(task: BenchTask, data_dir: Path, k: int, seed: int = SEED) -> tuple[tuple[str, int], ...]:
    """``k`` train examples, balanced over labels (round-robin), of moderate length, in a seeded order."""
    texts, labels = read_csv(data_dir / task.dir / "train.csv")
    rng = np.random.default_rng(seed)
    lo, hi = task.shot_words
    per_label = []
    for label in range(len(task.labels)):
        pool = [i for i in np.flatnonzero(labels == label) if lo <= len(texts[i].split()) <= hi]
        per_label.append(list(rng.permutation(pool)))
    picks = [per_label[j % len(task.labels)][j // len(task.labels)] for j in range(k)]
    picks = [picks[i] for i in rng.permutation(len(picks))]
    return tuple((texts[i], int(labels[i])) for i in picks)
