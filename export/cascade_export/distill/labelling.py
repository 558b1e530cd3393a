"""The labelling loop: a teacher labels the rows at given positions of a table in batches, the cache
(:class:`~cascade_export.distill.label_store.LabelStore`) answering the rows it holds (:func:`label_sample`); the
result is a :class:`Labelled` sample."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cascade.errors import ConfigError, ServerError
from cascade_export.distill.label_store import LabelStore, soft_label
from cascade_export.distill.table_rows import Table

LABEL_BATCH = 32  # rows per teacher call; the cache is committed after each


class SingleClassError(ConfigError):
    """The teacher gave every sampled row one label: nothing to learn, the task stays on the LLM."""


@dataclass
class Labelled:
    """The teacher-labelled sample."""

    ids: list[str]
    texts: list[str]
    labels: np.ndarray
    teacher: str
    cached_rows: int  # rows that came from the cache (a resumed run)
    teacher_s: float  # seconds spent waiting for the teacher in this run
    #: Per row, the sample it came from: UNIFORM or ACTIVE (empty: all uniform).
    kinds: list[str] = field(default_factory=list)
    #: The teacher's probabilities [n, k] (soft labels); NaN rows where the teacher gives none (a column teacher,
    #: a cache from before they were kept); None when no row has them.
    probs: np.ndarray | None = None

    def label_counts(self, n_labels: int) -> list[int]:
        return np.bincount(self.labels, minlength=n_labels).tolist()


def label_sample(
    task: str,
    labels: Sequence[str],
    table: Table,
    positions: np.ndarray,
    teacher,
    store: LabelStore,
    batch: int = LABEL_BATCH,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
    desc: str = "labelling",
    two_classes: bool = True,
) -> Labelled:
    """Label the rows at ``positions``: cached ones from ``store``, the rest from ``teacher`` in batches,
    each batch committed before the next (an interrupted run loses at most one batch). ``teacher.label`` gives
    label indices ``[n]`` or probabilities ``[n, k]`` (kept as soft labels). ``two_classes``: a sample of one
    label is a :class:`SingleClassError` (off for the active rows, which add to a seed)."""
    from cascade.progress import progress as progress_bar

    ids = [table.ids[i] for i in positions]
    texts = [table.texts[i] for i in positions]
    cached = store.get(task, teacher.name, ids, texts)
    todo = [k for k, row_id in enumerate(ids) if row_id not in cached]
    found = {row_id: label for row_id, label in cached.items()}
    soft = store.get_probs(task, teacher.name, ids, texts)
    spent = 0.0
    bar = progress_bar(len(ids), f"{desc} ({teacher.name})", "row", initial=len(ids) - len(todo), disable=not progress)
    try:
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            t = time.perf_counter()
            try:
                got = teacher.label(positions[chunk], [texts[k] for k in chunk])
            except ServerError as exc:  # the server went away: say what is kept and how to go on
                raise type(exc)(
                    f"{exc}. {len(found)} of {len(ids)} labels are kept in {store.path}: "
                    "rerun the same command to resume"
                ) from exc
            spent += time.perf_counter() - t
            probs = None
            if got.ndim == 2:  # probabilities: the label is their argmax
                if got.shape[1] != len(labels):
                    raise ConfigError(
                        f"teacher {teacher.name} answered {got.shape[1]} probabilities, not {len(labels)}"
                    )
                probs, got = got, got.argmax(axis=1).astype(np.int64)
                soft.update({ids[k]: soft_label(p) for k, p in zip(chunk, probs, strict=True)})
            if got.min(initial=0) < 0 or got.max(initial=0) >= len(labels):
                raise ConfigError(f"teacher {teacher.name} answered labels outside 0-{len(labels) - 1}")
            store.put(task, teacher.name, [ids[k] for k in chunk], [texts[k] for k in chunk], got, probs)
            found.update({ids[k]: int(y) for k, y in zip(chunk, got, strict=True)})
            bar.update(len(chunk))
            if on_batch is not None:
                on_batch(start + len(chunk))
    finally:
        bar.close()
    result = np.array([found[row_id] for row_id in ids], dtype=np.int64)
    present = np.flatnonzero(np.bincount(result, minlength=len(labels)))
    if two_classes and present.size < 2:
        only = labels[int(present[0])] if present.size else "?"
        raise SingleClassError(
            f"task {task}: the teacher labelled all {len(ids)} sampled rows {only!r}, so the cheap tiers have "
            "nothing to learn (extreme selectivity); keep this task on the LLM, or sample more rows"
        )
    probs = None
    if soft:
        probs = np.array([soft.get(row_id, [np.nan] * len(labels)) for row_id in ids], dtype=np.float32)
    return Labelled(ids, texts, result, teacher.name, len(ids) - len(todo), spent, probs=probs)
