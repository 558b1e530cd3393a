"""The gate's logic: confidence gating over a list of tiers, with no Triton import.

``python_backends/gate/model.py`` is thin glue around this module: it turns Triton requests into a
:class:`RowBatch`, wraps each tier model in a BLS call that satisfies :class:`Tier`, and calls
:func:`run_cascade`. Everything here is unit-tested with plain Python tiers.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from cascade import contract
from cascade.arrays import Array, Placement, all_finite, all_true, first_bad_row, host, nonzero, size
from cascade.errors import CascadeError, ConfigError, InvalidInput, TierFailure


class Cancelled(CascadeError):
    status = "CANCELLED"


# --- configuration (from config.pbtxt parameters) ------------------------------------------------
@dataclass(frozen=True)
class GateConfig:
    task: str
    labels: tuple[str, ...]
    tiers: tuple[int, ...]
    #: tier -> threshold on the top-class probability; every enabled tier but the last needs one.
    thresholds: dict[int, float]
    bls_timeout_ms: int = contract.DEFAULT_BLS_TIMEOUT_MS
    #: LLM tier -> its prompt: {"instruction": "...", "template": "...{text}...", "verbalizations": [...],
    #: "few_shot": [[text, label index], ...], "calibrate": true|false (optional)}. One per enabled LLM tier.
    prompts: dict[int, dict] = field(default_factory=dict)
    #: Embedding tiers run in-process by the gate (``contract.CFG_INLINE_TIERS``).
    inline_tiers: tuple[int, ...] = ()
    #: tier -> its own call deadline in ms (``contract.CFG_TIER_TIMEOUTS_MS``); others use bls_timeout_ms.
    tier_timeouts_ms: dict[int, int] = field(default_factory=dict)
    #: Where the gate's arrays live (``contract.CFG_PLACEMENT``).
    placement: str = contract.PLACEMENT_AUTO

    def __post_init__(self) -> None:
        if not self.task:
            raise ConfigError("gate parameter 'task' is empty")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"gate parameter 'labels' needs >= 2 distinct labels, got {self.labels!r}")
        if not self.tiers or list(self.tiers) != sorted(set(self.tiers)):
            raise ConfigError(f"gate parameter 'tiers' must be distinct and cheapest first: {self.tiers!r}")
        unknown = [t for t in self.tiers if t not in contract.TIER_NAMES]
        if unknown:
            raise ConfigError(f"gate parameter 'tiers' has unknown tiers {unknown}")
        for tier, value in self.thresholds.items():
            if tier not in self.tiers:
                raise ConfigError(
                    f"threshold given for tier {contract.TIER_NAMES.get(tier, tier)!r}, which is not enabled"
                )
            if not (isinstance(value, float) and 0.0 <= value <= 1.0):
                raise ConfigError(f"threshold of tier {contract.TIER_NAMES[tier]!r} must be in [0, 1]: {value!r}")
        missing = [contract.TIER_NAMES[t] for t in self.tiers[:-1] if t not in self.thresholds]
        if missing:
            raise ConfigError(f"gate parameter 'thresholds' lacks tiers {missing} (only the last may omit one)")
        if not (isinstance(self.bls_timeout_ms, int) and self.bls_timeout_ms > 0):
            raise ConfigError(f"gate parameter 'bls_timeout_ms' must be a positive integer: {self.bls_timeout_ms!r}")
        if not (
            self.placement in (contract.PLACEMENT_AUTO, "numpy", "torch:cpu")
            or (self.placement.startswith("torch:cuda:") and self.placement.rsplit(":", 1)[1].isdigit())
        ):
            raise ConfigError(
                f"gate parameter 'placement' must be auto, numpy, torch:cpu or torch:cuda:N, not {self.placement!r}"
            )
        for tier, ms in self.tier_timeouts_ms.items():
            name = contract.TIER_NAMES.get(tier, tier)
            if tier not in self.tiers:
                raise ConfigError(f"'tier_timeouts_ms' names tier {name!r}, which is not enabled")
            if isinstance(ms, bool) or not (isinstance(ms, int) and ms > 0):
                raise ConfigError(f"'tier_timeouts_ms' of {name!r} must be a positive integer (ms): {ms!r}")
        for tier in self.prompts:
            if tier not in self.tiers or tier not in contract.LLM_TIERS:
                name = contract.TIER_NAMES.get(tier, tier)
                raise ConfigError(f"prompt given for tier {name!r}, which is not an enabled LLM tier")
        missing = [contract.TIER_NAMES[t] for t in self.tiers if t in contract.LLM_TIERS and t not in self.prompts]
        if missing:
            raise ConfigError(f"LLM tiers {missing} are enabled but gate parameter 'prompts' has no prompt for them")
        bad = [contract.TIER_NAMES.get(t, t) for t in self.inline_tiers if t not in self.tiers]
        bad += [
            contract.TIER_NAMES[t] for t in self.inline_tiers if t in self.tiers and t not in contract.EMBEDDING_TIERS
        ]
        if bad:
            raise ConfigError(f"gate parameter 'inline_tiers' may list enabled embedding tiers only, not {bad}")
        for tier, prompt in self.prompts.items():
            try:
                check_prompt(prompt, len(self.labels))
            except ConfigError as exc:
                raise ConfigError(f"prompt of {contract.TIER_NAMES[tier]}: {exc}") from exc

    def device(self, instance_kind: str, device_id: int) -> str | None:
        """The ``cascade.arrays.Placement`` device of a gate instance of this kind (None: NumPy on the host)."""
        if self.placement == contract.PLACEMENT_AUTO:
            return f"cuda:{device_id}" if instance_kind == "GPU" else None
        return None if self.placement == "numpy" else self.placement.removeprefix("torch:")

    def timeout_s(self, tier: int) -> float:
        """The deadline of one call to ``tier``, in seconds."""
        return self.tier_timeouts_ms.get(tier, self.bls_timeout_ms) / 1000

    @property
    def needs_embedding(self) -> bool:
        return any(t in contract.EMBEDDING_TIERS for t in self.tiers)

    def to_parameters(self) -> dict[str, str]:
        return (
            {
                contract.CFG_TASK: self.task,
                contract.CFG_LABELS: json.dumps(list(self.labels)),
                contract.CFG_TIERS: json.dumps([contract.TIER_NAMES[t] for t in self.tiers]),
                contract.CFG_THRESHOLDS: json.dumps(
                    {contract.TIER_NAMES[t]: v for t, v in sorted(self.thresholds.items())}
                ),
                contract.CFG_BLS_TIMEOUT_MS: str(self.bls_timeout_ms),
            }
            | (
                {contract.CFG_PROMPTS: json.dumps({contract.TIER_NAMES[t]: p for t, p in sorted(self.prompts.items())})}
                if self.prompts
                else {}
            )
            | (
                {contract.CFG_INLINE_TIERS: json.dumps([contract.TIER_NAMES[t] for t in self.inline_tiers])}
                if self.inline_tiers
                else {}
            )
            | ({contract.CFG_PLACEMENT: self.placement} if self.placement != contract.PLACEMENT_AUTO else {})
            | (
                {
                    contract.CFG_TIER_TIMEOUTS_MS: json.dumps(
                        {contract.TIER_NAMES[t]: ms for t, ms in sorted(self.tier_timeouts_ms.items())}
                    )
                }
                if self.tier_timeouts_ms
                else {}
            )
        )

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> GateConfig:
        """Strict parsing: a missing, unknown or malformed parameter is a :class:`ConfigError`. Triton's own
        Python-backend keys (``contract.PYTHON_BACKEND_PARAMETERS``) are left to Triton."""
        params = {k: v for k, v in params.items() if k not in contract.PYTHON_BACKEND_PARAMETERS}
        expected = {
            contract.CFG_TASK,
            contract.CFG_LABELS,
            contract.CFG_TIERS,
            contract.CFG_THRESHOLDS,
            contract.CFG_BLS_TIMEOUT_MS,
        }
        optional = {
            contract.CFG_PROMPTS,
            contract.CFG_INLINE_TIERS,
            contract.CFG_TIER_TIMEOUTS_MS,
            contract.CFG_PLACEMENT,
        }
        unknown = set(params) - expected - optional
        if unknown:
            raise ConfigError(f"unknown gate parameters {sorted(unknown)}; expected {sorted(expected)}")
        missing = expected - set(params)
        if missing:
            raise ConfigError(f"missing gate parameters {sorted(missing)}")

        def load(key: str, kind: type):
            try:
                value = json.loads(params[key])
            except json.JSONDecodeError as exc:
                raise ConfigError(f"gate parameter {key!r} is not JSON: {params[key]!r}") from exc
            if not isinstance(value, kind):
                raise ConfigError(f"gate parameter {key!r} must be a JSON {kind.__name__}: {params[key]!r}")
            return value

        labels = load(contract.CFG_LABELS, list)
        if not all(isinstance(x, str) for x in labels):
            raise ConfigError(f"gate parameter 'labels' must list strings: {labels!r}")
        tiers = [_tier_from_name(name, ConfigError) for name in load(contract.CFG_TIERS, list)]
        thresholds = {}
        for name, value in load(contract.CFG_THRESHOLDS, dict).items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"threshold of {name!r} must be a number: {value!r}")
            thresholds[_tier_from_name(name, ConfigError)] = float(value)
        prompts = {}
        for name, prompt in (load(contract.CFG_PROMPTS, dict) if contract.CFG_PROMPTS in params else {}).items():
            if not isinstance(prompt, dict):
                raise ConfigError(f"prompt of {name!r} must be a JSON object: {prompt!r}")
            prompts[_tier_from_name(name, ConfigError)] = prompt
        inline = load(contract.CFG_INLINE_TIERS, list) if contract.CFG_INLINE_TIERS in params else []
        inline = [_tier_from_name(name, ConfigError) for name in inline]
        tier_timeouts = {
            _tier_from_name(name, ConfigError): ms
            for name, ms in (
                load(contract.CFG_TIER_TIMEOUTS_MS, dict) if contract.CFG_TIER_TIMEOUTS_MS in params else {}
            ).items()
        }
        try:
            timeout = int(params[contract.CFG_BLS_TIMEOUT_MS])
        except ValueError as exc:
            raise ConfigError(f"gate parameter 'bls_timeout_ms' is not an integer: {exc}") from exc
        return cls(
            task=params[contract.CFG_TASK],
            labels=tuple(labels),
            tiers=tuple(tiers),
            thresholds=thresholds,
            bls_timeout_ms=timeout,
            prompts=prompts,
            inline_tiers=tuple(inline),
            tier_timeouts_ms=tier_timeouts,
            placement=params.get(contract.CFG_PLACEMENT, contract.PLACEMENT_AUTO),
        )


def check_prompt(prompt: dict, n_labels: int) -> None:
    """An LLM tier's prompt: one ``{text}`` slot and one distinct verbalization per label."""
    unknown = set(prompt) - {"template", "verbalizations", "few_shot", "instruction", "calibrate"}
    if unknown:
        raise ConfigError(f"prompt has unknown keys {sorted(unknown)}")
    template = prompt.get("template")
    if not isinstance(template, str) or template.count("{text}") != 1:
        raise ConfigError(f"prompt template must contain '{{text}}' exactly once: {template!r}")
    verbalizations = prompt.get("verbalizations")
    if not isinstance(verbalizations, list) or not all(isinstance(v, str) and v.strip() for v in verbalizations):
        raise ConfigError(f"prompt verbalizations must be non-empty strings: {verbalizations!r}")
    if len(set(verbalizations)) != len(verbalizations):
        raise ConfigError(f"prompt verbalizations must be distinct: {verbalizations!r}")
    if len(verbalizations) != n_labels:
        raise ConfigError(f"{len(verbalizations)} prompt verbalizations for {n_labels} labels; they must match")
    for example in prompt.get("few_shot", []):
        if not (
            isinstance(example, list)
            and len(example) == 2
            and isinstance(example[0], str)
            and isinstance(example[1], int)
            and 0 <= example[1] < n_labels
        ):
            raise ConfigError(f"few-shot example must be [text, label index]: {example!r}")
    if not isinstance(prompt.get("calibrate", True), bool):
        raise ConfigError(f"prompt 'calibrate' must be true or false: {prompt['calibrate']!r}")


def prompt_template(prompt: dict):
    """The ``cascade.llm.PromptTemplate`` of a gate's ``prompt`` parameter."""
    from cascade.llm import PromptTemplate

    return PromptTemplate(
        template=prompt["template"],
        verbalizations=tuple(prompt["verbalizations"]),
        few_shot=tuple((text, label) for text, label in prompt.get("few_shot", [])),
        instruction=prompt.get("instruction", ""),
    )


def _tier_from_name(value, error: type[CascadeError]) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in contract.TIER_NAMES:
        return value
    if isinstance(value, str):
        if value in contract.TIER_BY_NAME:
            return contract.TIER_BY_NAME[value]
        if value.isdigit() and int(value) in contract.TIER_NAMES:
            return int(value)
    raise error(f"unknown tier {value!r}; tiers are 0-4 or {', '.join(contract.TIER_BY_NAME)}")


# --- per-request options --------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestOptions:
    min_tier: int = 0
    max_tier: int = contract.TIER_LLM_LARGE
    return_probs: bool = False

    @classmethod
    def parse(cls, params: dict, enabled: Sequence[int]) -> RequestOptions:
        unknown = set(params) - set(contract.GATE_REQUEST_PARAMETERS)
        if unknown:
            raise InvalidInput(
                f"unknown request parameters {sorted(unknown)}; known: {list(contract.GATE_REQUEST_PARAMETERS)}"
            )
        min_tier = _tier_from_name(params.get(contract.PARAM_MIN_TIER, 0), InvalidInput)
        max_tier = _tier_from_name(params.get(contract.PARAM_MAX_TIER, contract.TIER_LLM_LARGE), InvalidInput)
        if min_tier > max_tier:
            raise InvalidInput(f"min_tier ({min_tier}) is above max_tier ({max_tier})")
        if not any(min_tier <= t <= max_tier for t in enabled):
            raise InvalidInput(
                f"no enabled tier between min_tier {min_tier} and max_tier {max_tier}; enabled: {list(enabled)}"
            )
        return_probs = params.get(contract.PARAM_RETURN_PROBS, False)
        if isinstance(return_probs, str) and return_probs.lower() in ("true", "false", "1", "0"):
            return_probs = return_probs.lower() in ("true", "1")
        if not isinstance(return_probs, bool):
            raise InvalidInput(f"return_probs must be a boolean: {return_probs!r}")
        return cls(min_tier=min_tier, max_tier=max_tier, return_probs=return_probs)


# --- input decoding -------------------------------------------------------------------------------
def decode_texts(raw: Sequence) -> list[str]:
    """UTF-8 decode and check a TEXT batch; cut each text to MAX_TEXT_CHARS characters."""
    fast = _decode_joined(raw)
    if fast is not None:
        return fast
    texts = []
    for i, value in enumerate(raw):
        if isinstance(value, bytes | np.bytes_):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"TEXT[{i}] is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
        elif not isinstance(value, str):
            raise InvalidInput(f"TEXT[{i}] must be a string, got {type(value).__name__}")
        if not value.strip():
            raise InvalidInput(f"TEXT[{i}] is empty")
        texts.append(value[: contract.MAX_TEXT_CHARS])
    return texts


def _decode_joined(raw: Sequence) -> list[str] | None:
    """The common case in one pass: all rows are bytes, valid UTF-8, non-blank and short. ``None`` sends the
    batch to the row-by-row path, which names the first bad row. Joining with an ASCII separator keeps
    UTF-8 validity per row (a truncated sequence cannot swallow the separator)."""
    if len(raw) == 0 or set(map(type, raw)) != {bytes}:
        return None
    joined = b"\x00".join(raw)
    if joined.count(b"\x00") != len(raw) - 1:
        return None  # a row holds NUL itself: split by position instead
    try:
        texts = joined.decode("utf-8").split("\x00")
    except UnicodeDecodeError:
        return None
    if not all(map(str.strip, texts)) or max(map(len, texts)) > contract.MAX_TEXT_CHARS:
        return None
    return texts


def check_text_free(options: RequestOptions, enabled: Sequence[int]) -> None:
    """A request without TEXT must keep its rows on the embedding tiers."""
    reachable = [t for t in enabled if options.min_tier <= t <= options.max_tier]
    text_tiers = [contract.TIER_NAMES[t] for t in reachable if t not in contract.EMBEDDING_TIERS]
    if text_tiers:
        embedding_tiers = [contract.TIER_NAMES[t] for t in enabled if t in contract.EMBEDDING_TIERS]
        raise InvalidInput(
            f"TEXT is missing: send it, or send EMBEDDING with max_tier set so that only embedding tiers "
            f"{embedding_tiers or '(none enabled)'} can answer (tiers {text_tiers} read text)"
        )


def check_embeddings(embeddings: Array, n_rows: int) -> Array:
    """A request's EMBEDDING ([n, 384], finite) as float32, in its own namespace and device."""
    if embeddings.ndim != 2 or embeddings.shape[1] != contract.EMBEDDING_DIM:
        raise InvalidInput(f"EMBEDDING must have shape [n, {contract.EMBEDDING_DIM}], got {list(embeddings.shape)}")
    if embeddings.shape[0] != n_rows:
        raise InvalidInput(f"EMBEDDING has {embeddings.shape[0]} rows but TEXT has {n_rows}")
    if not all_finite(embeddings):
        raise InvalidInput(f"EMBEDDING row {first_bad_row(embeddings)} holds NaN or Inf")
    return Placement.of(embeddings).asarray(embeddings)


# --- the rows of one execute() ---------------------------------------------------------------------
class RowBatch:
    """Texts of all rows, embeddings where the client sent them, others computed once on demand.

    ``texts`` may be ``None`` when every row came with an embedding and no text (see ``check_text_free``).
    The embeddings live where ``placement`` says (the host, or a GPU); row indices are arrays of the same
    placement."""

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
        self._emb = at.asarray(embeddings) if embeddings is not None else at.zeros((n, contract.EMBEDDING_DIM))
        if have_embedding is not None:
            self._have = at.asarray(have_embedding, dtype="bool")
        else:
            self._have = at.full((n,), embeddings is not None, dtype="bool")
        self._embed = embed
        self.embedded_rows = 0

    def __len__(self) -> int:
        return self._n

    def text(self, rows: Array) -> list[str]:
        if self.texts is None:
            raise TierFailure("these rows came without TEXT")
        return [self.texts[i] for i in host(rows).tolist()]

    def embedding(self, rows: Array) -> Array:
        if size(rows) == len(self) and all_true(self._have):  # rows are sorted and distinct: all of them
            return self._emb
        missing = rows[~self._have[rows]]
        if size(missing):
            if self._embed is None:
                raise TierFailure("rows need an embedding but no embedder is available")
            self._emb[missing] = self.placement.asarray(self._embed(self.text(missing)))
            self._have[missing] = True
            self.embedded_rows += size(missing)
        return self._emb[rows]


# --- tier calls: a deadline and a circuit breaker ---------------------------------------------------
class TierGuard:
    """Run each call to a tier model with a deadline the gate enforces, behind a circuit breaker.

    - **Deadline.** A BLS request's own timeout bounds only its time in the tier's queue, not its
      execution: a hung tier would hang the gate. Here a call runs on a worker thread; past its deadline it
      raises :class:`TierFailure` (the rows go on to the next tier) and is left to finish in the background.
    - **Breaker.** After a failure or a missed deadline the target is skipped at once for ``retry_after_s``,
      and for as long as an abandoned call to it still runs; then the next call tries it again. A dead tier
      (Triton takes about a second to call a killed stub unhealthy) costs one failure per interval, not one
      per request, and a hung one holds at most one thread.
    """

    def __init__(self, targets: int, retry_after_s: float = contract.TIER_RETRY_AFTER_S) -> None:
        self.retry_after_s = retry_after_s
        # One call runs at a time per gate instance, plus at most one abandoned call per target.
        self._pool = ThreadPoolExecutor(max_workers=targets + 1, thread_name_prefix="tier-call")
        self._abandoned: dict[str, Future] = {}
        self._open: dict[str, tuple[float, str]] = {}  # target -> (skip until, the failure that opened it)
        self._lock = threading.Lock()

    def call(self, target: str, fn: Callable[[], object], timeout_s: float) -> object:
        """``fn()``, which raises TierFailure for a failed call; raises TierFailure when skipped or late."""
        self._check(target)
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            with self._lock:
                self._abandoned[target] = future
            self._trip(target, f"no answer within {timeout_s * 1000:.0f} ms")
            raise TierFailure(f"{target}: no answer within {timeout_s * 1000:.0f} ms") from None
        except TierFailure as exc:
            self._trip(target, str(exc))
            raise

    def _check(self, target: str) -> None:
        with self._lock:
            stuck = self._abandoned.get(target)
            if stuck is not None and not stuck.done():
                raise TierFailure(f"{target}: skipped, a call to it is still running past its deadline")
            self._abandoned.pop(target, None)
            until, why = self._open.get(target, (0.0, ""))
            if time.monotonic() < until:
                raise TierFailure(f"{target}: skipped for {self.retry_after_s:g} s after a failure ({why})")
            self._open.pop(target, None)

    def _trip(self, target: str, why: str) -> None:
        with self._lock:
            self._open[target] = (time.monotonic() + self.retry_after_s, why)

    def down(self) -> list[str]:
        """Targets skipped now."""
        now = time.monotonic()
        with self._lock:
            stuck = {t for t, f in self._abandoned.items() if not f.done()}
            return sorted(stuck | {t for t, (until, _) in self._open.items() if now < until})

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# --- the cascade ------------------------------------------------------------------------------------
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


@dataclass
class CascadeResult:
    probs: Array  # [n, k] float32, where the batch lives
    tier: Array  # [n] int32, -1 where no tier answered
    errors: list[str | None]  # per row: why no tier answered
    stats: list[TierStat] = field(default_factory=list)

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


def run_cascade(
    batch: RowBatch,
    tiers: Sequence[Tier],
    thresholds: dict[int, float],
    n_labels: int,
    min_tier: Array,
    max_tier: Array,
    cancelled: Callable[[], bool] = lambda: False,
) -> CascadeResult:
    """Answer each row at the cheapest tier whose confidence clears its threshold.

    Rows of a tier below the threshold go on to the next tier; the last tier a row may use (the
    highest enabled tier <= its ``max_tier``) answers whatever reaches it. A tier that fails passes
    its rows on; rows that no tier could answer get an error message. ``cancelled`` (a round trip to the
    server) is asked before each tier that reads text, the costly ones, not before the embedding tiers.

    The row selection runs where the batch lives (NumPy on the host, torch on a GPU): ``min_tier`` and
    ``max_tier`` are per-row arrays of the same placement, and so are ``probs`` and ``tier`` in the result.
    """
    n = len(batch)
    at = batch.placement
    order = sorted(tiers, key=lambda t: t.tier)
    probs = at.zeros((n, n_labels))
    answered_by = at.full((n,), -1, dtype="int32")
    errors: list[str | None] = [None] * n
    # The last tier each row may use; it accepts whatever confidence.
    final = at.full((n,), -1)
    for tier in order:
        final[tier.tier <= max_tier] = tier.tier
    pending = at.full((n,), True, dtype="bool")
    stats = []
    for tier in order:
        if all_true(~pending):
            break
        rows = nonzero(pending & (min_tier <= tier.tier) & (tier.tier <= max_tier))
        if size(rows) == 0:
            continue
        if tier.tier not in contract.EMBEDDING_TIERS and cancelled():
            raise Cancelled("request cancelled by the client")
        stat = TierStat(tier.tier, rows_in=size(rows))
        stats.append(stat)
        start = time.perf_counter()
        try:
            p = at.asarray(tier.predict_proba(batch, rows))
            if tuple(p.shape) != (size(rows), n_labels) or not all_finite(p):
                raise TierFailure(
                    f"tier {contract.TIER_NAMES[tier.tier]} returned shape {list(p.shape)} "
                    f"(want {[size(rows), n_labels]}) or non-finite values"
                )
        except TierFailure as exc:
            stat.failed, stat.error = True, str(exc)
            for i in host(rows).tolist():
                errors[i] = f"tier {contract.TIER_NAMES[tier.tier]} failed: {exc}"
            stat.seconds = time.perf_counter() - start
            continue
        stat.seconds = time.perf_counter() - start
        conf = at.xp.max(p, axis=1)
        stat.confidence = host(conf)
        threshold = thresholds.get(tier.tier, math.inf)
        accept = (conf >= threshold) | (final[rows] <= tier.tier)
        chosen = rows[accept]
        probs[chosen] = p[accept]
        answered_by[chosen] = tier.tier
        pending[chosen] = False
        stat.answered = size(chosen)
        if any(s.failed for s in stats):  # rows a failed tier passed on are answered after all
            for i in host(chosen).tolist():
                errors[i] = None
    for i in host(nonzero(pending)).tolist():
        if errors[i] is None:
            errors[i] = "no enabled tier could answer this row"
    return CascadeResult(probs=probs, tier=answered_by, errors=errors, stats=stats)
