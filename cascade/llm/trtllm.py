"""The large tier on GPU (TensorRT-LLM): prompt token ids in, label probabilities out. Pure logic.

No Triton and no ``tensorrt_llm`` import: ``python_backends/llm_trtllm/model.py`` (the ``llm_large`` BLS
model of the GPU profile) wraps this module, and the unit tests run it with recorded arrays.

How a row is scored (one engine step, never sampling):

1. :func:`encode_prompt` tokenizes ``prefix + content + suffix`` with the engine's Hugging Face tokenizer
   exactly as the CPU scorer (:class:`cascade.llm.scorer.LlamaScorer`) does with llama.cpp: template pieces with
   their special tokens parsed, the row content never; a trailing space of the prefix moves to the content;
   only the content is cut (from its end) to fit the engine's ``max_input_len``, and the row is flagged.
2. The BLS model sends the ids to ``tensorrt_llm`` with ``request_output_len=1`` and
   ``return_generation_logits=true`` (:func:`scoring_inputs`).
3. :func:`probs_from_generation_logits` takes the logits of the first generation step -- the next-token
   distribution after the prompt -- and softmaxes them over each candidate's **first token**
   (:func:`candidate_first_tokens`).

Log-probs of generated tokens are no substitute: TensorRT-LLM returns zeros for them under greedy decoding.

**Multi-token candidates are scored by their first token on this path** (one step), unlike the CPU scorer,
which teacher-forces every token of every candidate. So a task's verbalizations must start with distinct
tokens; :func:`candidate_first_tokens` raises (``ConfigError`` at load, ``InvalidInput`` per request)
otherwise. "very positive" / "very negative" must be reworded ("positive" / "negative").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascade import contract
from cascade.errors import CascadeError, ConfigError, InvalidInput
from cascade.llm.prompts import (
    CONTENT_FREE,
    Prompt,
    PromptTemplate,
    answer_text,
    contextual_calibration,
    validate_candidates,
)

__all__ = [
    "CONTENT_FREE",
    "EncodedPrompt",
    "HFTokenizer",
    "LogitsError",
    "calibrate",
    "candidate_first_tokens",
    "check_template",
    "encode_prompt",
    "first_step_logits",
    "generate_inputs",
    "greedy_mismatch",
    "load_tokenizer",
    "probs_from_generation_logits",
    "scoring_inputs",
]


class LogitsError(CascadeError):
    """``tensorrt_llm`` answered logits that cannot be scored (wrong shape, all zero, non-finite)."""

    status = "INTERNAL"


# --------------------------------------------------------------------------------------------- tokenizer


class HFTokenizer:
    """One interface over a ``tokenizers.Tokenizer`` or a ``transformers`` tokenizer.

    ``encode(text, parse_special)`` never adds special tokens; ``parse_special=False`` makes marker strings
    such as ``<|im_start|>`` or ``[SEP]`` in row content ordinary text, as the CPU scorer does.
    ``special_prefix`` holds the tokens the tokenizer puts before a text (BOS, ``[CLS]``; often nothing).
    """

    def __init__(self, tokenizer: Any, eos_id: int | None = None, pad_id: int | None = None) -> None:
        self._raw = _is_tokenizers_lib(tokenizer)
        self.tok = self._literal = tokenizer
        if self._raw:  # private copies without the padding/truncation a tokenizer.json may carry
            self.tok, self._literal = _copy(tokenizer), _copy(tokenizer)
            if hasattr(self._literal, "encode_special_tokens"):  # marker strings stay text
                self._literal.encode_special_tokens = True
        self.eos_id = eos_id if eos_id is not None else _attr_id(tokenizer, "eos_token_id")
        pad = pad_id if pad_id is not None else _attr_id(tokenizer, "pad_token_id")
        self.pad_id = pad if pad is not None else self.eos_id
        self.bos_id = _attr_id(tokenizer, "bos_token_id")
        self.special_prefix = self._special_prefix()

    def encode(self, text: str, parse_special: bool = True) -> tuple[int, ...]:
        if not text:
            return ()
        if self._raw:
            tok = self.tok if parse_special else self._literal
            return tuple(tok.encode(text, add_special_tokens=False).ids)
        if parse_special:
            return tuple(self.tok.encode(text, add_special_tokens=False))
        try:
            return tuple(self.tok.encode(text, add_special_tokens=False, split_special_tokens=True))
        except TypeError:  # slow tokenizers without split_special_tokens
            return tuple(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary, added tokens included (the engine's logits may be padded wider)."""
        return int(self.tok.get_vocab_size(with_added_tokens=True)) if self._raw else len(self.tok)

    def piece(self, token_id: int) -> str:
        """The vocabulary string of one token (for messages)."""
        if self._raw:
            return self.tok.id_to_token(int(token_id)) or "?"
        return str(self.tok.convert_ids_to_tokens(int(token_id)))

    def _special_prefix(self) -> tuple[int, ...]:
        probe = "a"
        plain = list(self.encode(probe))
        if self._raw:
            full = list(self.tok.encode(probe, add_special_tokens=True).ids)
        else:
            full = list(self.tok.encode(probe, add_special_tokens=True))
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return tuple(full[:start])
        return ()


def _copy(tokenizer: Any) -> Any:
    copy = type(tokenizer).from_str(tokenizer.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def _is_tokenizers_lib(tokenizer: Any) -> bool:
    return type(tokenizer).__module__.split(".")[0] == "tokenizers"


def _attr_id(tokenizer: Any, name: str) -> int | None:
    value = getattr(tokenizer, name, None)
    if isinstance(value, list):  # generation configs may list several EOS ids
        value = value[0] if value else None
    return int(value) if isinstance(value, int | np.integer) else None


def load_tokenizer(tokenizer_dir: str | Path) -> HFTokenizer:
    """The engine's tokenizer from a Hugging Face model folder (``transformers`` if installed, else ``tokenizers``)."""
    path = Path(tokenizer_dir)
    if not path.is_dir():
        raise ConfigError(f"tokenizer directory not found: {path}")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        AutoTokenizer = None  # noqa: N806
    if AutoTokenizer is not None:
        try:
            return HFTokenizer(AutoTokenizer.from_pretrained(str(path), local_files_only=True))
        except (OSError, ValueError) as exc:
            if not (path / "tokenizer.json").is_file():
                raise ConfigError(f"cannot load a tokenizer from {path}: {exc}") from exc
    if not (path / "tokenizer.json").is_file():
        raise ConfigError(f"{path} has no tokenizer.json")
    from tokenizers import Tokenizer

    return HFTokenizer(Tokenizer.from_file(str(path / "tokenizer.json")), eos_id=_config_eos(path))


def _config_eos(path: Path) -> int | None:
    for name in ("generation_config.json", "config.json"):
        try:
            value = json.loads((path / name).read_text()).get("eos_token_id")
        except (OSError, ValueError):
            continue
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    return None


# --------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class EncodedPrompt:
    """A row's input ids (special prefix + prefix + content + suffix) and whether the content was cut."""

    input_ids: tuple[int, ...]
    truncated: bool


def encode_prompt(tokenizer: HFTokenizer, prompt: Prompt, max_input_len: int) -> EncodedPrompt:
    """Token ids of a row, the content cut from its end so that the whole fits ``max_input_len`` tokens."""
    if max_input_len < 1:
        raise ConfigError(f"max_input_len must be positive, got {max_input_len}")
    stripped = prompt.prefix.rstrip(" ")
    content = prompt.prefix[len(stripped) :] + prompt.content
    suffix_text, _ = answer_text(prompt.suffix, "")
    head = tokenizer.special_prefix + tokenizer.encode(stripped, parse_special=True)
    if not head and tokenizer.bos_id is not None:  # give the model a start, as the CPU scorer does
        head = (tokenizer.bos_id,)
    tail = tokenizer.encode(suffix_text, parse_special=True)
    body = tokenizer.encode(content, parse_special=False)
    room = max_input_len - len(head) - len(tail)
    if room < 0:
        raise InvalidInput(
            f"the prompt's instruction, examples and suffix ({len(head) + len(tail)} tokens) do not fit the "
            f"engine's max_input_len of {max_input_len} tokens"
        )
    truncated = len(body) > room
    ids = head + body[:room] + tail
    if not ids:
        raise InvalidInput("the prompt tokenizes to nothing")
    return EncodedPrompt(input_ids=ids, truncated=truncated)


def candidate_first_tokens(
    tokenizer: HFTokenizer, suffix: str, candidates: Sequence[str], error: type[Exception] = InvalidInput
) -> tuple[int, ...]:
    """The first token of each candidate as it follows ``suffix`` (leading space as in the CPU scorer).

    The answer is tokenized in context -- ``suffix + answer`` minus the tokens of ``suffix`` -- so that
    SentencePiece tokenizers, which prepend a dummy space to every text they encode, give the answer's real
    first token rather than a bare "▁". Raises ``error`` when two candidates share their first token.
    """
    cands = validate_candidates(candidates, error=error)
    suffix_text, _ = answer_text(suffix, "")
    suffix_ids = tokenizer.encode(suffix_text, parse_special=True)
    firsts: list[int] = []
    for cand in cands:
        _, answer = answer_text(suffix, cand)
        full = tokenizer.encode(suffix_text + answer, parse_special=True)
        if suffix_ids and full[: len(suffix_ids)] == suffix_ids and len(full) > len(suffix_ids):
            ids = full[len(suffix_ids) :]
        else:  # the answer merged into the suffix's last token: tokenize it alone
            ids = tokenizer.encode(answer, parse_special=False)
        if not ids:
            raise error(f"candidate {cand!r} tokenizes to nothing")
        firsts.append(ids[0])
    seen: dict[int, str] = {}
    for cand, tok in zip(cands, firsts, strict=True):
        if tok in seen:
            raise error(
                f"verbalizations {seen[tok]!r} and {cand!r} start with the same token {tokenizer.piece(tok)!r} "
                f"(id {tok}): the TensorRT-LLM scorer reads one generation step, so it scores each candidate by "
                "its first token only; reword the verbalizations so that their first tokens differ"
            )
        seen[tok] = cand
    return tuple(firsts)


def check_template(tokenizer: HFTokenizer, template: PromptTemplate) -> tuple[int, ...]:
    """Load-time check of a task for the GPU large tier: its verbalizations have distinct first tokens."""
    _, suffix = template.parts
    return candidate_first_tokens(tokenizer, suffix, template.verbalizations, error=ConfigError)


# --------------------------------------------------------------------------------------------- requests


def _scalar(value: int | bool, datatype: str) -> np.ndarray:
    """A per-row scalar of the ``tensorrt_llm`` model for one row: shape [1, 1] (dims [1], reshape [])."""
    return np.array([[value]], dtype=contract.NUMPY_DTYPES[datatype])


def scoring_inputs(input_ids: Sequence[int], end_id: int | None = None, pad_id: int | None = None) -> dict:
    """The ``tensorrt_llm`` inputs of one scoring request: one step, generation logits returned."""
    return _request(input_ids, 1, end_id, pad_id, streaming=False, return_logits=True)


def generate_inputs(
    input_ids: Sequence[int], max_tokens: int, end_id: int | None = None, pad_id: int | None = None
) -> dict:
    """The ``tensorrt_llm`` inputs of one streamed generation (greedy, the backend's default sampling)."""
    return _request(input_ids, max_tokens, end_id, pad_id, streaming=True, return_logits=False)


def _request(ids, output_len, end_id, pad_id, streaming: bool, return_logits: bool) -> dict[str, np.ndarray]:
    c = contract
    ids = np.asarray(ids, dtype=np.int32).reshape(1, -1)
    if ids.shape[1] == 0:
        raise InvalidInput("empty input_ids")
    inputs = {
        c.TRTLLM_INPUT_IDS.name: ids,
        c.TRTLLM_INPUT_LENGTHS.name: _scalar(ids.shape[1], c.TRTLLM_INPUT_LENGTHS.datatype),
        c.TRTLLM_REQUEST_OUTPUT_LEN.name: _scalar(output_len, c.TRTLLM_REQUEST_OUTPUT_LEN.datatype),
        c.TRTLLM_STREAMING.name: _scalar(streaming, c.TRTLLM_STREAMING.datatype),
        c.TRTLLM_RETURN_GENERATION_LOGITS.name: _scalar(return_logits, c.TRTLLM_RETURN_GENERATION_LOGITS.datatype),
    }
    if end_id is not None:
        inputs[c.TRTLLM_END_ID.name] = _scalar(end_id, c.TRTLLM_END_ID.datatype)
    if pad_id is not None:
        inputs[c.TRTLLM_PAD_ID.name] = _scalar(pad_id, c.TRTLLM_PAD_ID.datatype)
    return inputs


# --------------------------------------------------------------------------------------------- logits


def first_step_logits(logits: np.ndarray) -> np.ndarray:
    """[batch, vocab] float64 logits of the first generation step (beam 0).

    ``logits`` is ``generation_logits`` as the backend returns it: [batch, beams, steps, vocab] (each
    response of the C++ backend has batch 1), or one row's [beams, steps, vocab] (the config's per-row dims).
    """
    arr = np.asarray(logits)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise LogitsError(
            f"generation_logits must be [batch, beams, steps, vocab] or [beams, steps, vocab], got {list(arr.shape)}"
        )
    if 0 in arr.shape:
        raise LogitsError(
            f"generation_logits is empty ({list(arr.shape)}): build the engine with --gather_generation_logits "
            "and send return_generation_logits=true"
        )
    first = arr[:, 0, 0, :].astype(np.float64)
    if not np.isfinite(first).all():
        raise LogitsError("generation_logits holds NaN or Inf")
    if (np.abs(first).max(axis=-1) == 0).any():
        raise LogitsError(
            "generation_logits of the first step are all zero: the engine was probably built without "
            "--gather_generation_logits"
        )
    return first


def probs_from_generation_logits(logits: np.ndarray, candidate_token_ids: Sequence[int]) -> np.ndarray:
    """[batch, k] float32: softmax of the first step's logits over the candidates' first tokens."""
    first = first_step_logits(logits)
    ids = np.asarray(candidate_token_ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise InvalidInput("candidate_token_ids must be a non-empty list of token ids")
    vocab = first.shape[-1]
    if ids.min() < 0 or ids.max() >= vocab:
        raise LogitsError(f"candidate token ids {ids.tolist()} outside the engine's vocabulary of {vocab}")
    if len(set(ids.tolist())) != ids.size:
        raise InvalidInput(f"candidates share first tokens {ids.tolist()}")
    return _softmax(first[:, ids]).astype(np.float32)


def greedy_mismatch(logits: np.ndarray, output_ids: np.ndarray) -> np.ndarray:
    """[batch] bool: the generated token is not the argmax of the first step's logits.

    Under greedy decoding they agree; disagreement means the logits are not those of the first step (some
    TensorRT-LLM versions returned the first token's logits among the context logits only) -- a check the
    ``llm_large`` model runs on every response, since this path has not run on a GPU yet.
    """
    first = first_step_logits(logits)
    out = np.asarray(output_ids)
    if out.ndim == 2:  # one row: [beams, tokens]
        out = out[None]
    if out.ndim != 3 or out.shape[0] != first.shape[0] or out.shape[2] < 1:
        raise LogitsError(f"output_ids must be [batch, beams, tokens] with batch {first.shape[0]}, got {out.shape}")
    token = out[:, 0, -1]  # exclude_input_in_output=false puts the prompt first: the new token is the last one
    return first.argmax(axis=-1) != token


def calibrate(probs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Contextual calibration, as the CPU scorer (:func:`cascade.llm.prompts.contextual_calibration`), in float32."""
    return contextual_calibration(probs, prior).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
