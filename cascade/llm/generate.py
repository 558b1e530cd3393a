"""Free-form streaming text for ``llm_generate`` (both profiles). No Triton import: the decoupled Python model
``python_backends/llm_generate/model.py`` wraps this module.

* :func:`parse_request` checks one request (``PROMPT_TEXT``, optional ``MAX_TOKENS``); bad input is an
  :class:`~cascade.errors.InvalidInput` (INVALID_ARG for that request).
* CPU: :class:`LlamaGenerator` streams a greedy completion from llama.cpp (``create_completion(stream=True)``).
* GPU: the model streams ``output_ids`` from ``tensorrt_llm`` (BLS, ``streaming=true``);
  :func:`pieces_from_token_stream` turns them into text with an :class:`IncrementalDetokenizer`, which holds
  back a token that ends in the middle of a UTF-8 character or a word piece.
* :func:`with_last` marks the last piece, so the model sends it with the COMPLETE_FINAL flag: every response
  carries exactly one ``TEXT_OUTPUT`` piece, and the final one closes the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascade.errors import InvalidInput

REPLACEMENT_CHAR = "\ufffd"
#: Prompt tokens an :class:`IncrementalDetokenizer` keeps as context.
CONTEXT_TOKENS = 4


# --------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    max_tokens: int


def parse_request(
    prompt: np.ndarray, max_tokens: np.ndarray | None, default_max_tokens: int, max_tokens_limit: int
) -> GenerateRequest:
    """One prompt (non-empty UTF-8) and a token budget in ``[1, max_tokens_limit]``."""
    values = np.asarray(prompt, dtype=np.object_).reshape(-1)
    if values.size != 1:
        raise InvalidInput(f"PROMPT_TEXT must hold exactly one prompt per request, got {values.size}")
    raw = values[0]
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = bytes(raw).decode("utf-8")
        except (UnicodeDecodeError, TypeError) as exc:
            raise InvalidInput("PROMPT_TEXT is not valid UTF-8") from exc
    if not text.strip():
        raise InvalidInput("empty prompt: PROMPT_TEXT must contain some text")
    budget = default_max_tokens
    if max_tokens is not None:
        limit = np.asarray(max_tokens).reshape(-1)
        if limit.size != 1:
            raise InvalidInput(f"MAX_TOKENS must be one integer, got {limit.size} values")
        budget = int(limit[0])
    if not 1 <= budget <= max_tokens_limit:
        raise InvalidInput(f"MAX_TOKENS must be between 1 and {max_tokens_limit}, got {budget}")
    return GenerateRequest(prompt=text, max_tokens=budget)


def with_last(pieces: Iterable[str]) -> Iterator[tuple[str, bool]]:
    """``(piece, is_last)`` pairs; an empty stream still yields one final ``("", True)``."""
    iterator = iter(pieces)
    try:
        previous = next(iterator)
    except StopIteration:
        yield "", True
        return
    for piece in iterator:
        yield previous, False
        previous = piece
    yield previous, True


# --------------------------------------------------------------------------------------------- CPU (llama.cpp)


class LlamaGenerator:
    """Greedy streaming completion with llama.cpp over a GGUF file; one instance per model instance."""

    def __init__(self, model_path: str | Path, n_ctx: int = 1024, n_threads: int = 2) -> None:
        from cascade.llm.gguf import load_llama

        self._llm: Any = load_llama(model_path, n_ctx, n_threads)
        self.n_ctx = int(self._llm.n_ctx())

    def count_tokens(self, prompt: str) -> int:
        return len(self._llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))

    def stream(self, prompt: str, max_tokens: int, cancelled: Callable[[], bool] = lambda: False) -> Iterator[str]:
        """Text pieces of the completion of ``prompt``; stops at end of text, ``max_tokens`` or cancellation."""
        n_prompt = self.count_tokens(prompt)
        if n_prompt >= self.n_ctx:
            raise InvalidInput(f"the prompt ({n_prompt} tokens) does not fit the {self.n_ctx}-token context")
        budget = min(max_tokens, self.n_ctx - n_prompt)
        chunks = self._llm.create_completion(prompt, max_tokens=budget, temperature=0.0, stream=True)
        try:
            for chunk in chunks:
                text = chunk["choices"][0]["text"]
                if text:
                    yield text
                if cancelled():
                    return
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()


# --------------------------------------------------------------------------------------------- GPU (token ids)


class IncrementalDetokenizer:
    """Text of a growing token sequence, piece by piece (``decode`` is the tokenizer's ``ids -> str``).

    Pass the last few prompt tokens as ``context`` (see :data:`CONTEXT_TOKENS`).

    Each piece is the difference between decoding a short window with and without the new tokens, so that
    tokenizers whose decoding of a token depends on its neighbours (SentencePiece spaces, byte-level
    fragments of one UTF-8 character) never emit a broken or doubled character.
    """

    def __init__(self, decode: Callable[[list[int]], str], context: Sequence[int] = ()) -> None:
        self._decode = decode
        # A few prompt tokens as context: the first generated token keeps its leading space.
        self.ids: list[int] = [int(i) for i in context]
        self._prefix = 0  # start of the window decoded for context
        self._read = len(self.ids)  # tokens whose text has been emitted (or that are context)

    def push(self, new_ids: Iterable[int]) -> str:
        self.ids.extend(int(i) for i in new_ids)
        return self._emit(final=False)

    def flush(self) -> str:
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if len(self.ids) == self._read:
            return ""
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) <= len(before) or (after.endswith(REPLACEMENT_CHAR) and not final):
            return ""  # an incomplete character or a piece that only makes sense with the next token
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before) :]


def new_tokens(output_ids: np.ndarray, sequence_length: np.ndarray | None = None) -> list[int]:
    """The token ids of one streamed ``tensorrt_llm`` response (batch 1, beam 0; -1 padding dropped)."""
    ids = np.asarray(output_ids)
    while ids.ndim > 1:  # [batch, beams, tokens] -> tokens of row 0, beam 0
        ids = ids[0]
    if sequence_length is not None:
        length = np.asarray(sequence_length).reshape(-1)
        if length.size:
            ids = ids[: max(0, int(length[0]))]
    return [int(i) for i in ids if i >= 0]


def pieces_from_token_stream(
    batches: Iterable[Sequence[int]], detokenizer: IncrementalDetokenizer, end_id: int | None = None
) -> Iterator[str]:
    """Text pieces from batches of new token ids; stops at ``end_id``."""
    for batch in batches:
        ids = list(batch)
        done = end_id is not None and end_id in ids
        if done:
            ids = ids[: ids.index(end_id)]
        piece = detokenizer.push(ids)
        if piece:
            yield piece
        if done:
            break
    tail = detokenizer.flush()
    if tail:
        yield tail
