"""CPU LLM label scorer for tiers 3 (``llm_small``) and 4 (``llm_large``): llama.cpp over packaged GGUFs.

A row is a :class:`Prompt` (``prefix`` + ``content`` + ``suffix``); the label is predicted right after the
suffix. :class:`LlamaScorer` turns next-token logits into a probability per candidate verbalization (never
sampling), reuses the KV cache of the longest token prefix shared with what it evaluated last (so the
instruction and few-shot examples are evaluated once, not once per row), optionally divides out the
content-free label prior (contextual calibration, Zhao et al. 2021), and cuts over-long content from its end.

The prompts and the parsing of scorer requests live in :mod:`cascade.llm.prompts` (importable from here too).

No Triton import here: the Python-backend ``model.py`` wraps this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cascade.errors import ConfigError, InvalidInput
from cascade.llm.prompts import (
    CONTENT_FREE,
    Prompt,
    answer_text,
    contextual_calibration,
    validate_candidates,
)

#: How a candidate of several tokens is scored: all its tokens (teacher-forced, summed log-probs), or (the
#: default) its tokens up to the first one no other candidate shares: the tokens after it add no evidence, only
#: a penalty on long words and a cost per row (AG News "Sci/Tech" was never predicted with whole-word scoring;
#: bench_llm "+prefix" variants; a 77-label task 0.38 -> 0.87 rows/s at the same accuracy: bench_labels).
SCORING_WHOLE, SCORING_PREFIX = "whole", "prefix"
CANDIDATE_SCORINGS = (SCORING_WHOLE, SCORING_PREFIX)
#: Trie nodes evaluated per level at most (:mod:`cascade.llm.trie`): a level of up to this many nodes is scored
#: exactly; a wider one keeps its most probable prefixes. On the 77-label benchmark a beam of 4 chose the exact
#: answer on every row at 1.6x the exact trie's speed (bench/results/labels-20261129-153949.json).
DEFAULT_BEAM = 4
_MAX_SEQS = 256  # llama.cpp's LLAMA_MAX_SEQ: sequence 0 holds the row, the rest the trie's nodes


# --------------------------------------------------------------------------------------------- scorer


@dataclass(frozen=True)
class ScoreResult:
    """``probs`` [n, k] float32 rows summing to 1; ``truncated`` [n] bool: the row's content was cut to fit."""

    probs: np.ndarray
    truncated: np.ndarray
    raw_probs: np.ndarray | None = field(default=None, compare=False)  # before calibration


@dataclass(frozen=True)
class Encoded:
    """A tokenized row: what the model sees before the label, and each candidate's tokens."""

    context: tuple[int, ...]  # BOS + prefix + content + suffix tokens
    candidates: tuple[tuple[int, ...], ...]
    truncated: bool


class LlamaScorer:
    """Label probabilities from a GGUF causal LM via llama.cpp; one instance per Triton model instance."""

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int = 1024,
        n_threads: int = 2,
        calibrate: bool = True,
        content_free: Sequence[str] = CONTENT_FREE,
        candidate_scoring: str = SCORING_PREFIX,
        beam: int | None = DEFAULT_BEAM,
    ) -> None:
        from cascade.llm.gguf import load_llama
        from cascade.llm.trie import LevelDecoder

        if candidate_scoring not in CANDIDATE_SCORINGS:
            raise ConfigError(f"candidate_scoring must be one of {CANDIDATE_SCORINGS}, not {candidate_scoring!r}")
        self.candidate_scoring = candidate_scoring

        if n_ctx < 16:
            raise ConfigError(f"n_ctx={n_ctx} is too small")
        # swa_full: models with sliding-window attention (Gemma 3) otherwise drop the KV cells the prefix
        # cache relies on; costs a little memory for the small n_ctx used here.
        self._llm: Any = load_llama(model_path, n_ctx, n_threads, logits_all=False, swa_full=True)
        self._use_sequences(_MAX_SEQS)
        self.model_path = Path(model_path)
        self.n_ctx = min(n_ctx, self._llm.n_ctx())
        self._levels = LevelDecoder(self._llm._ctx, int(self._llm.n_vocab()), _MAX_SEQS)
        if beam is not None and beam < 1:
            raise ConfigError(f"beam must be at least 1 (or None: exact), not {beam}")
        self.beam = beam
        self.calibrate = calibrate
        self.content_free = tuple(content_free)
        self.n_vocab = int(self._llm.n_vocab())
        self._n_swa = self._model_n_swa()
        self._bos = int(self._llm.token_bos())
        self._tokens: dict[tuple[str, bool, bool], tuple[int, ...]] = {}
        self._prior: dict[tuple[str, str, tuple[str, ...], str], np.ndarray] = {}
        self.evaluated_tokens = 0  # tokens run through the model: shows what the prefix cache saves

    # ---- public

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[str], calibrate: bool | None = None) -> ScoreResult:
        """Probabilities of ``candidates`` as the continuation of each prompt (softmax over candidates)."""
        cands = validate_candidates(candidates)
        calibrate = self.calibrate if calibrate is None else calibrate
        n, k = len(prompts), len(cands)
        logp = np.zeros((n, k), dtype=np.float64)
        truncated = np.zeros(n, dtype=bool)
        encoded = [self.encode(p, cands) for p in prompts]
        # Rows that share more leading tokens run next to each other, so the KV cache is reused the most.
        for i in sorted(range(n), key=lambda i: encoded[i].context):
            logp[i] = self._score_encoded(encoded[i])
            truncated[i] = encoded[i].truncated
        raw = _softmax(logp)
        probs = raw
        if calibrate and n:
            probs = raw.copy()
            for i, p in enumerate(prompts):
                probs[i] = contextual_calibration(raw[i], self._content_free_prior(p.prefix, p.suffix, cands))
        return ScoreResult(probs=probs.astype(np.float32), truncated=truncated, raw_probs=raw.astype(np.float32))

    def reset(self) -> None:
        """Forget the KV cache (the next row evaluates its whole prompt)."""
        self._llm.n_tokens = 0
        self._llm._ctx.kv_cache_seq_rm(-1, 0, -1)

    def tokenize(self, text: str, bos: bool = False, special: bool = False) -> tuple[int, ...]:
        """Tokens of ``text``; template text is tokenized with ``special`` (chat markers), row content never."""
        key = (text, bos, special)
        cached = self._tokens.get(key)
        if cached is None:
            cached = tuple(self._llm.tokenize(text.encode("utf-8"), add_bos=bos, special=special))
            if special:  # row contents are not cached: unbounded; template pieces are few
                _bounded_put(self._tokens, key, cached)
        return cached

    def content_free_prior(self, prefix: str, suffix: str, candidates: Sequence[str]) -> np.ndarray:
        """The label distribution on content-free inputs for this prompt frame (cached)."""
        return self._content_free_prior(prefix, suffix, validate_candidates(candidates))

    # ---- internals

    def _content_free_prior(self, prefix: str, suffix: str, cands: tuple[str, ...]) -> np.ndarray:
        key = (prefix, suffix, cands, self.candidate_scoring)
        prior = self._prior.get(key)
        if prior is None:
            rows = [self.encode(Prompt(prefix, cf, suffix), cands) for cf in self.content_free]
            prior = np.mean([_softmax(self._score_encoded(e)[None, :])[0] for e in rows], axis=0)
            prior = np.maximum(prior, 1e-12)
            _bounded_put(self._prior, key, prior)
        return prior

    def encode(self, prompt: Prompt, candidates: Sequence[str]) -> Encoded:
        """Token ids of a row's context (content cut from its end to fit) and of each candidate."""
        cands = validate_candidates(candidates)
        prefix, content, suffix = prompt.prefix, prompt.content, prompt.suffix
        # A space at the end of a template piece belongs to the next word ("Review:" + " great"), as BPE
        # tokenizers see it in training, so it moves across the boundary before tokenizing.
        stripped = prefix.rstrip(" ")
        content = prefix[len(stripped) :] + content
        suffix_text, _ = answer_text(suffix, "")
        head = self.tokenize(stripped, bos=True, special=True)
        if not head:  # no prefix, and a tokenizer that adds no BOS (SmolLM2): still give the model a start
            head = (self._bos,)
        tail = self.tokenize(suffix_text, special=True)
        body = self.tokenize(content) if content else ()
        cand_tokens = tuple(self._candidate_tokens(suffix, c) for c in cands)
        room = self.n_ctx - len(head) - len(tail) - max(len(c) for c in cand_tokens)
        if room < 0:
            raise InvalidInput(
                f"the prompt's instruction, examples and suffix ({len(head) + len(tail)} tokens) leave no room "
                f"for the row and the candidates in the {self.n_ctx}-token context"
            )
        truncated = len(body) > room
        if truncated:
            body = body[:room]
        return Encoded(context=head + body + tail, candidates=cand_tokens, truncated=truncated)

    def _candidate_tokens(self, suffix: str, candidate: str) -> tuple[int, ...]:
        _, answer = answer_text(suffix, candidate)
        key = (answer, False, False)
        tokens = self._tokens.get(key)
        if tokens is None:
            tokens = self.tokenize(answer)
            _bounded_put(self._tokens, key, tokens)  # candidates are few: cache them
        if not tokens:
            raise InvalidInput(f"candidate {candidate!r} tokenizes to nothing")
        return tokens

    def _score_encoded(self, enc: Encoded) -> np.ndarray:
        """Summed log-probs of each candidate's tokens after the context (teacher forcing): all its tokens, or
        with ``candidate_scoring="prefix"`` only those up to the first one no other candidate shares. The
        candidates' tokens are a trie, evaluated a level per decode (:mod:`cascade.llm.trie`)."""
        from cascade.llm.trie import trie_logprobs

        lp0 = self._eval_logprobs(enc.context)
        candidates = enc.candidates
        if self.candidate_scoring == SCORING_PREFIX:
            candidates = unique_prefixes(candidates)
        width = self._levels.max_width if self.beam is None else min(self.beam, self._levels.max_width)
        self._levels.start(len(enc.context))
        try:
            return trie_logprobs(lp0, candidates, self._levels.decode, width)
        finally:
            self._levels.finish()

    def _use_sequences(self, n_seq_max: int) -> None:
        """Recreate the llama.cpp context with ``n_seq_max`` sequences over one unified KV cache (the candidate
        trie's nodes are sequences that share the row's cells); llama-cpp-python's ``Llama`` makes one."""
        from llama_cpp._internals import LlamaContext

        llm = self._llm
        params = llm.context_params
        params.n_seq_max = n_seq_max
        params.kv_unified = True
        old, llm._ctx = llm._ctx, LlamaContext(model=llm._model, params=params, verbose=False)
        old.close()

    def _eval_logprobs(self, tokens: tuple[int, ...]) -> np.ndarray:
        """Next-token log-probs after ``tokens``, evaluating only what the KV cache does not hold yet."""
        llm = self._llm
        have = llm.n_tokens
        ids = np.asarray(tokens, dtype=np.intc)
        m = min(have, len(ids) - 1)  # evaluate at least the last token: its logits are the ones we want
        diff = np.flatnonzero(llm.input_ids[:m] != ids[:m])
        keep = int(diff[0]) if diff.size else m
        if keep < have and not self._truncate_cache(keep):
            keep = 0
            self.reset()
        llm.n_tokens = keep
        llm.eval(list(tokens[keep:]))
        self.evaluated_tokens += len(tokens) - keep
        logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(self.n_vocab,)).astype(np.float64)
        return logits - _logsumexp(logits)

    def _truncate_cache(self, keep: int) -> bool:
        """Drop KV cells from position ``keep`` on; False when the cells before it are not all there."""
        import llama_cpp

        ctx = self._llm._ctx
        if not ctx.kv_cache_seq_rm(-1, keep, -1):
            return False
        if keep == 0:
            return True
        pos_min = llama_cpp.llama_memory_seq_pos_min(ctx.memory, 0)
        # A sliding-window cache may have dropped positions that the next tokens still attend to.
        return pos_min <= (max(0, keep - self._n_swa) if self._n_swa > 0 else 0)

    def _model_n_swa(self) -> int:
        import llama_cpp

        try:
            return int(llama_cpp.llama_model_n_swa(self._llm._model.model))
        except (AttributeError, TypeError):
            return 0


def unique_prefixes(candidates: Sequence[tuple[int, ...]]) -> tuple[tuple[int, ...], ...]:
    """Each candidate's tokens up to and including the first one where it parts from every other candidate
    (the whole candidate when another one starts with all of it)."""
    out = []
    for j, tokens in enumerate(candidates):
        shared = 0
        for i, other in enumerate(candidates):
            if i != j:
                common = next((t for t, (a, b) in enumerate(zip(tokens, other, strict=False)) if a != b), None)
                shared = max(shared, min(len(tokens), len(other)) if common is None else common)
        out.append(tokens[: min(len(tokens), shared + 1)])
    return tuple(out)


_CACHE_ENTRIES = 1024  # template pieces and priors kept per scorer; a client sending ever-new prefixes cannot grow it


def _bounded_put(cache: dict, key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_ENTRIES:
        cache.pop(next(iter(cache)))  # oldest first (dicts keep insertion order)
    cache[key] = value


def _logsumexp(x: np.ndarray) -> float:
    top = float(np.max(x))
    return top + float(np.log(np.sum(np.exp(x - top))))


def _softmax(logp: np.ndarray) -> np.ndarray:
    z = logp - logp.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
