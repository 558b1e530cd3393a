"""Confidence gating over a list of tiers, one tier at a time, with no Triton import.

A :class:`CascadeRun` holds one request's rows on their way through the tiers: :meth:`CascadeRun.step` runs one tier
on the rows that reach it, :meth:`CascadeRun.finish` gives the answers. :func:`run_cascade` runs every step at once;
the gate's lanes (``cascade.gate.lanes``) run the cheap steps inline and the costly ones on the thread of each tier,
so a request the embedding tiers answer never waits behind an LLM call.

The row selection runs where the batch lives (NumPy on the host, torch on a GPU): ``min_tier`` and ``max_tier`` are
per-row arrays of the same placement, and so are ``probs`` and ``tier`` in the result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from cascade import contract
from cascade.errors import CascadeError, InvalidInput, TierFailure
from cascade.gate.arrays import Array, Placement, all_finite, all_true, host, nonzero, size


class Cancelled(CascadeError):
    status = "CANCELLED"


class RowBatch:
    """Texts of all rows, embeddings where the client sent them, others computed once on demand.

    ``texts`` may be ``None`` when every row came with an embedding and no text (see ``gate.check_text_free``).
    The embeddings live where ``placement`` says (the host, or a GPU); row indices are arrays of the same
    placement. ``queue_deadline`` (``time.monotonic()``) is when the current tier call must have left the tier's
    queue: the gate's lanes set it from the time the rows started waiting for that tier."""

    def __init__(
        self,
        texts: list[str] | None,
        embeddings: Array | None = None,
        have_embedding: Array | None = None,
        embed: Callable[[list[str]], Array] | None = None,
        placement: Placement | None = None,
    ) -> None:
        if texts is None and embeddings is None:
            raise InvalidInput("a batch needs TEXT or EMBEDDING")
        self.texts = texts
        n = len(texts) if texts is not None else int(embeddings.shape[0])
        self._n = n
        self.placement = placement or (Placement.of(embeddings) if embeddings is not None else Placement())
        at = self.placement
        # Without EMBEDDING, the width is the embedder's: known at its first answer (zero-width until then).
        self._emb = at.asarray(embeddings) if embeddings is not None else at.zeros((n, 0))
        if have_embedding is not None:
            self._have = at.asarray(have_embedding, dtype="bool")
        else:
            self._have = at.full((n,), embeddings is not None, dtype="bool")
        self._embed = embed
        self.embedded_rows = 0
        self.queue_deadline: float | None = None

    def __len__(self) -> int:
        return self._n

    def own(self) -> None:
        """Copy the embeddings into memory of this batch's own (a request's input tensors are freed once the
        gate's ``execute`` returns, and the rows may still be on their way)."""
        self._emb = self._emb.clone() if hasattr(self._emb, "clone") else self._emb.copy()

    def text(self, rows: Array) -> list[str]:
        if self.texts is None:
            raise TierFailure("these rows came without TEXT")
        return [self.texts[i] for i in host(rows).tolist()]

    def lacks_embedding(self, rows: Array) -> bool:
        """Whether any of ``rows`` would need the embedder."""
        return size(rows) > 0 and not all_true(self._have[rows])

    def embedding(self, rows: Array) -> Array:
        if size(rows) == len(self) and all_true(self._have):  # rows are sorted and distinct: all of them
            return self._emb
        missing = rows[~self._have[rows]]
        if size(missing):
            if self._embed is None:
                raise TierFailure("rows need an embedding but no embedder is available")
            fresh = self.placement.asarray(self._embed(self.text(missing)))
            if self._emb.shape[1] != fresh.shape[1]:
                if all_true(~self._have):  # the first answer of the embedder sets the width
                    self._emb = self.placement.zeros((len(self), int(fresh.shape[1])))
                else:
                    raise TierFailure(
                        f"the embedder gives {fresh.shape[1]}-d rows, the request's are {self._emb.shape[1]}-d"
                    )
            self._emb[missing] = fresh
            self._have[missing] = True
            self.embedded_rows += size(missing)
        return self._emb[rows]


class Tier(Protocol):
    """One tier: class probabilities for the given rows of a batch, in the task's label order, as an array of the
    batch's placement (or of the host: it is moved)."""

    tier: int

    def predict_proba(self, batch: RowBatch, rows: Array) -> Array: ...


@dataclass
class TierStat:
    tier: int
    rows_in: int = 0
    answered: int = 0
    failed: bool = False
    seconds: float = 0.0
    error: str | None = None
    #: Top-class probability of each row the tier scored, on the host (for the confidence histogram).
    confidence: np.ndarray | None = None
    #: Seconds the rows waited for this tier (the gate's lane), counted apart from ``seconds``.
    queued_s: float = 0.0


@dataclass
class CascadeResult:
    probs: Array  # [n, k] float32, where the batch lives
    tier: Array  # [n] int32, -1 where no tier answered
    errors: list[str | None]  # per row: why no tier answered
    stats: list[TierStat] = field(default_factory=list)
    #: [n] bool on the host: the row carries a best-effort answer (the tier that should have answered it failed)
    degraded: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.degraded is None:
            self.degraded = np.zeros(len(self.errors), bool)

    @property
    def confidence(self) -> np.ndarray:
        """Top-class probability per row, on the host."""
        probs = host(self.probs)
        return probs.max(axis=1) if probs.size else np.zeros(0, np.float32)

    @property
    def label_index(self) -> np.ndarray:
        """Index of the top class per row, on the host."""
        probs = host(self.probs)
        return probs.argmax(axis=1) if probs.size else np.zeros(0, np.int64)


class CascadeRun:
    """One batch's rows on their way through ``tiers``, cheapest first.

    Each row is answered at the cheapest tier whose confidence clears its threshold; the last tier a row may use
    (the highest enabled tier <= its ``max_tier``) answers whatever reaches it. A tier that fails passes its rows
    on. With ``on_tier_failure="best_effort"`` a row that no later tier could answer gets the answer of the most
    confident tier that scored it, flagged ``degraded``; only rows no tier scored get an error."""

    def __init__(
        self,
        batch: RowBatch,
        tiers: Sequence[Tier],
        thresholds: dict[int, float],
        n_labels: int,
        min_tier: Array,
        max_tier: Array,
        on_tier_failure: str = contract.ON_FAILURE_BEST_EFFORT,
    ) -> None:
        n, at = len(batch), batch.placement
        self.batch, self.thresholds, self.n_labels = batch, thresholds, n_labels
        self.min_tier, self.max_tier, self.on_tier_failure = min_tier, max_tier, on_tier_failure
        self.order = sorted(tiers, key=lambda t: t.tier)
        self.probs = at.zeros((n, n_labels))
        self.answered_by = at.full((n,), -1, dtype="int32")
        self.errors: list[str | None] = [None] * n
        # The last tier each row may use; it accepts whatever confidence.
        self.final = at.full((n,), -1)
        for tier in self.order:
            self.final[tier.tier <= max_tier] = tier.tier
        self.pending = at.full((n,), True, dtype="bool")
        # The most confident answer each row got so far (the best-effort answer if the tiers after it fail).
        self.best_probs = at.zeros((n, n_labels))
        self.best_conf = at.full((n,), -1.0, dtype="float32")
        self.best_tier = at.full((n,), -1, dtype="int32")
        self.stats: list[TierStat] = []
        self._cursor = 0

    def rows_for(self, tier: Tier) -> Array:
        return nonzero(self.pending & (self.min_tier <= tier.tier) & (tier.tier <= self.max_tier))

    def next_tier(self) -> Tier | None:
        """The next tier with rows to score, or None when every row is answered or out of tiers."""
        while self._cursor < len(self.order):
            tier = self.order[self._cursor]
            if all_true(~self.pending):
                self._cursor = len(self.order)
                return None
            if size(self.rows_for(tier)):
                return tier
            self._cursor += 1
        return None

    def step(self, tier: Tier, failure: TierFailure | None = None, queued_s: float = 0.0) -> TierStat:
        """Score the rows that reach ``tier`` (or, given a ``failure``, pass them on without calling it)."""
        rows = self.rows_for(tier)
        self._cursor = self.order.index(tier) + 1
        stat = TierStat(tier.tier, rows_in=size(rows), queued_s=queued_s)
        self.stats.append(stat)
        start = time.perf_counter()
        at = self.batch.placement
        try:
            if failure is not None:
                raise failure
            p = at.asarray(tier.predict_proba(self.batch, rows))
            if tuple(p.shape) != (size(rows), self.n_labels) or not all_finite(p):
                raise TierFailure(
                    f"tier {contract.TIER_NAMES[tier.tier]} returned shape {list(p.shape)} "
                    f"(want {[size(rows), self.n_labels]}) or non-finite values"
                )
        except TierFailure as exc:
            stat.failed, stat.error = True, str(exc)
            for i in host(rows).tolist():
                self.errors[i] = f"tier {contract.TIER_NAMES[tier.tier]} failed: {exc}"
            stat.seconds = time.perf_counter() - start
            return stat
        stat.seconds = time.perf_counter() - start
        conf = at.xp.max(p, axis=1)
        stat.confidence = host(conf)
        better = conf > self.best_conf[rows]
        improved = rows[better]
        self.best_probs[improved], self.best_conf[improved], self.best_tier[improved] = (
            p[better],
            conf[better],
            tier.tier,
        )
        accept = (conf >= self.thresholds.get(tier.tier, math.inf)) | (self.final[rows] <= tier.tier)
        chosen = rows[accept]
        self.probs[chosen] = p[accept]
        self.answered_by[chosen] = tier.tier
        self.pending[chosen] = False
        stat.answered = size(chosen)
        if any(s.failed for s in self.stats):  # rows a failed tier passed on are answered after all
            for i in host(chosen).tolist():
                self.errors[i] = None
        return stat

    def finish(self) -> CascadeResult:
        degraded = np.zeros(len(self.errors), bool)
        left = nonzero(self.pending)
        if self.on_tier_failure == contract.ON_FAILURE_BEST_EFFORT and size(left):
            scored = left[self.best_tier[left] >= 0]
            self.probs[scored] = self.best_probs[scored]
            self.answered_by[scored] = self.best_tier[scored]
            self.pending[scored] = False
            for i in host(scored).tolist():
                self.errors[i] = None
                degraded[i] = True
        for i in host(nonzero(self.pending)).tolist():
            if self.errors[i] is None:
                self.errors[i] = "no enabled tier could answer this row"
        return CascadeResult(self.probs, self.answered_by, self.errors, self.stats, degraded)


def run_cascade(
    batch: RowBatch,
    tiers: Sequence[Tier],
    thresholds: dict[int, float],
    n_labels: int,
    min_tier: Array,
    max_tier: Array,
    cancelled: Callable[[], bool] = lambda: False,
    on_tier_failure: str = contract.ON_FAILURE_BEST_EFFORT,
) -> CascadeResult:
    """Every step of a :class:`CascadeRun` on this thread. ``cancelled`` (a round trip to the server) is asked
    before each tier that reads text, the costly ones, not before the embedding tiers."""
    run = CascadeRun(batch, tiers, thresholds, n_labels, min_tier, max_tier, on_tier_failure)
    while (tier := run.next_tier()) is not None:
        if tier.tier not in contract.EMBEDDING_TIERS and cancelled():
            raise Cancelled("request cancelled by the client")
        run.step(tier)
    return run.finish()
