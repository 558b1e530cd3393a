"""A gate request's inputs, with no Triton import: its parameters (:class:`RequestOptions`, tier names included)
and the checks of its TEXT and EMBEDDING tensors.

``cascade.gate.request_io`` parses each request with this module; ``cascade.gate.config`` holds the gate's own
configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cascade import contract
from cascade.contract import tier_from_name
from cascade.errors import InvalidInput
from cascade.gate.arrays import Array, Placement, all_finite, first_bad_row


# --- per-request options --------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestOptions:
    min_tier: int = 0
    max_tier: int = contract.TIER_LLM_LARGE
    return_probs: bool = False
    on_tier_failure: str = contract.ON_FAILURE_BEST_EFFORT

    @classmethod
    def parse(
        cls, params: dict, enabled: Sequence[int], on_tier_failure: str = contract.ON_FAILURE_BEST_EFFORT
    ) -> RequestOptions:
        unknown = set(params) - set(contract.GATE_REQUEST_PARAMETERS)
        if unknown:
            raise InvalidInput(
                f"unknown request parameters {sorted(unknown)}; known: {list(contract.GATE_REQUEST_PARAMETERS)}"
            )
        min_tier = tier_from_name(params.get(contract.PARAM_MIN_TIER, 0), InvalidInput)
        max_tier = tier_from_name(params.get(contract.PARAM_MAX_TIER, contract.TIER_LLM_LARGE), InvalidInput)
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
        on_failure = params.get(contract.PARAM_ON_TIER_FAILURE, on_tier_failure)
        if on_failure not in contract.ON_TIER_FAILURE_CHOICES:
            raise InvalidInput(
                f"on_tier_failure must be one of {list(contract.ON_TIER_FAILURE_CHOICES)}, not {on_failure!r}"
            )
        return cls(min_tier=min_tier, max_tier=max_tier, return_probs=return_probs, on_tier_failure=on_failure)


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


def check_embeddings(embeddings: Array, n_rows: int, dim: int = contract.EMBEDDING_DIM) -> Array:
    """A request's EMBEDDING ([n, dim], finite; dim is the repository's embedder's) as float32, in its own
    namespace and device."""
    if embeddings.ndim != 2 or embeddings.shape[1] != dim:
        raise InvalidInput(
            f"EMBEDDING must have shape [n, {dim}] (this repository's embedder), got {list(embeddings.shape)}"
        )
    if embeddings.shape[0] != n_rows:
        raise InvalidInput(f"EMBEDDING has {embeddings.shape[0]} rows but TEXT has {n_rows}")
    if not all_finite(embeddings):
        raise InvalidInput(f"EMBEDDING row {first_bad_row(embeddings)} holds NaN or Inf")
    return Placement.of(embeddings).asarray(embeddings)
