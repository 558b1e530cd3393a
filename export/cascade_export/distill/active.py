"""Active sampling (``cascade label --strategy active``): a uniform seed is labelled first, then the rows of a
uniform pool that a tier-0 logistic regression fitted on the seed is least sure of (:func:`label_active`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from cascade.errors import ConfigError
from cascade_export.build.labelled import ACTIVE, UNIFORM
from cascade_export.distill.label_store import LabelStore
from cascade_export.distill.labelling import LABEL_BATCH, Labelled, label_sample
from cascade_export.distill.table_rows import Table, sample_rows

#: Active sampling: the uniform seed is half the budget, at least ACTIVE_MIN_SEED rows (all of a smaller
#: budget); the active rows are chosen among a uniform pool of at most ACTIVE_POOL_FACTOR x their number.
ACTIVE_MIN_SEED = 200
ACTIVE_POOL_FACTOR = 20


def active_sizes(budget: int) -> tuple[int, int]:
    """``(uniform seed rows, active rows)`` of an active budget: half each, with a seed of at least
    ACTIVE_MIN_SEED rows (a smaller budget is all seed: too few labels to tell which rows are hard)."""
    n_seed = min(budget, max(ACTIVE_MIN_SEED, budget - budget // 2))
    return n_seed, budget - n_seed


def least_confident(seed_emb: np.ndarray, seed_labels: np.ndarray, pool_emb: np.ndarray, n: int):
    """``(picked, top)``: the pool positions (sorted) of the ``n`` rows that a logistic regression fitted as
    tier 0 on the seed is least sure of, and every pool row's top probability. The lowest top probability is
    what tier 0's threshold escalates; for two labels it orders rows as the margin does."""
    from cascade_export.build.tabular import train_logreg

    _, y = np.unique(seed_labels, return_inverse=True)  # train_logreg wants labels 0..k-1, all present
    top = train_logreg(seed_emb, y).predict_proba(pool_emb).max(axis=1)
    # Rounded, ties broken by pool order: a rerun picks the same rows whatever the embeddings' last bits.
    order = np.lexsort((np.arange(len(top)), np.round(top, 6)))
    return np.sort(order[:n]), top


def label_active(
    task: str,
    labels: Sequence[str],
    table: Table,
    teacher,
    store: LabelStore,
    budget: int,
    seed: int,
    embed_rows: Callable[[list[str]], np.ndarray],
    progress: bool = True,
    batch: int = LABEL_BATCH,
) -> tuple[Labelled, dict]:
    """Active sampling: ``budget`` rows in all. A uniform seed (:func:`active_sizes`) is labelled first; a
    uniform pool of the other rows (at most ACTIVE_POOL_FACTOR x the active rows, to bound the embedding
    cost) is embedded with the seed by ``embed_rows``, and the rest of the budget goes to the pool rows that a
    tier-0 logistic regression fitted on the seed is least sure of (:func:`least_confident`). Everything
    follows from ``seed`` and the cached seed labels, so a rerun picks the same rows (and finds them cached)."""
    if budget > len(table):
        raise ConfigError(f"the table has {len(table)} rows, fewer than the budget {budget}")
    n_seed, n_active = active_sizes(budget)
    seed_pos = sample_rows(len(table), n_seed, seed)
    first = label_sample(task, labels, table, seed_pos, teacher, store, batch, progress, desc="uniform seed")
    info = {"seed_rows": n_seed, "active_rows": n_active, "pool_rows": 0}
    if n_active == 0:
        first.kinds = [UNIFORM] * n_seed
        return first, info
    rest = np.setdiff1d(np.arange(len(table)), seed_pos)
    n_pool = min(rest.size, ACTIVE_POOL_FACTOR * n_active)
    pool = np.sort(np.random.default_rng([seed, 1]).choice(rest, size=n_pool, replace=False))
    if progress:
        print(f"[label] embedding {n_seed} seed + {n_pool} pool rows to pick {n_active} active rows", flush=True)
    t = time.perf_counter()
    emb = np.asarray(embed_rows(first.texts + [table.texts[i] for i in pool]), dtype=np.float32)
    embed_s = time.perf_counter() - t
    picked, top = least_confident(emb[:n_seed], first.labels, emb[n_seed:], n_active)
    second = label_sample(
        task, labels, table, pool[picked], teacher, store, batch, progress, desc="active rows", two_classes=False
    )
    done = Labelled(
        first.ids + second.ids,
        first.texts + second.texts,
        np.concatenate([first.labels, second.labels]),
        teacher.name,
        first.cached_rows + second.cached_rows,
        first.teacher_s + second.teacher_s,
        [UNIFORM] * n_seed + [ACTIVE] * n_active,
        _stack_probs(first, second, len(labels)),
    )
    info |= {
        "pool_rows": n_pool,
        "embed_s": embed_s,
        "pool_mean_top_prob": float(top.mean()),
        "active_mean_top_prob": float(top[picked].mean()),
    }
    return done, info


def _stack_probs(first: Labelled, second: Labelled, k: int) -> np.ndarray | None:
    if first.probs is None and second.probs is None:
        return None
    parts = [x.probs if x.probs is not None else np.full((len(x.ids), k), np.nan, np.float32) for x in (first, second)]
    return np.concatenate(parts)
