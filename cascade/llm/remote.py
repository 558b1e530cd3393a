"""An OpenAI-compatible endpoint as an LLM label scorer: the same rows (:class:`~cascade.llm.prompts.Prompt`), the
same candidates, the same contextual calibration and the same :class:`~cascade.llm.scorer.ScoreResult` as the
in-process llama.cpp scorer, so the gate, the teachers and the teacher check cannot tell them apart.

How a candidate is scored depends on what the endpoint offers; a probe at load finds out (:meth:`RemoteScorer.probe`):

* ``completions`` (preferred): ``/v1/completions`` with ``logprobs`` and ``max_tokens=1``: the top log-probs of
  the next token. Each candidate's tokens are learnt once per prompt frame by echoing ``suffix + answer`` (only the
  tokens: llama-cpp-python 0.3's server returns echoed log-probs one position off). A candidate is scored by its
  tokens up to the first one that sets it apart (the local scorer's default ``prefix`` scoring), asked as a token
  trie: one call per row when the candidates' first tokens differ, one more per shared prefix otherwise.
* ``chat`` (where only chat exists): ``/v1/chat/completions`` with ``top_logprobs`` (at most 20) and
  ``max_tokens=1``: each candidate by the most probable token that begins it. It cannot tell apart candidates that
  begin with the same token, and a candidate outside the top 20 gets the 20th's log-probability.

A candidate missing from the top log-probs gets the lowest log-probability listed (an upper bound on its own).
Rows are sent concurrently, up to the endpoint's ``concurrency``; content longer than ``max_content_chars`` is cut
from its end (``truncated``). No Triton import here.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cascade.errors import ConfigError
from cascade.llm.openai_http import DEFAULT_KEY_ENV, Endpoint, EndpointError, OpenAIClient
from cascade.llm.prompts import CONTENT_FREE, Prompt, answer_text, contextual_calibration, validate_candidates
from cascade.llm.scorer import ScoreResult, _bounded_put, _softmax, unique_prefixes

TOP_LOGPROBS = 20  # the OpenAI API's limit for chat
#: Next-token log-probs asked of a completions endpoint, the first it accepts kept (vLLM's default limit is 20,
#: OpenAI's 5; llama.cpp's server has none, and SmolLM2 leaves a label outside its top 20 on 1 SST-2 row in 10).
LOGPROBS_TRIED = (100, 20, 5)
PROBE_TEXT = "The capital of France is"


class RemoteScorer:
    """Label probabilities from an OpenAI-compatible endpoint; one instance per Triton model instance or teacher."""

    def __init__(
        self,
        endpoint: Endpoint,
        client: OpenAIClient | None = None,
        calibrate: bool = True,
        content_free: Sequence[str] = CONTENT_FREE,
        max_content_chars: int = 4000,
        top_logprobs: int = LOGPROBS_TRIED[0],
    ) -> None:
        self.endpoint = endpoint
        self.client = client or OpenAIClient(endpoint, endpoint.api_key())
        self.calibrate = calibrate
        self.content_free = tuple(content_free)
        self.max_content_chars = max_content_chars
        self.top_logprobs = top_logprobs
        self.mode = endpoint.mode
        self.echo = False
        self.served: list = []
        self._pool = ThreadPoolExecutor(max_workers=endpoint.concurrency, thread_name_prefix="llm-remote")
        self._tokens: dict[tuple[str, tuple[str, ...]], tuple[tuple[str, ...], ...]] = {}
        self._prior: dict[tuple[str, str, tuple[str, ...]], np.ndarray] = {}

    # ---- load

    def probe(self) -> str:
        """Check the endpoint answers with log-probs, choose the mode, and say what it cannot do. A refused key, a
        wrong URL or model, or an endpoint without log-probs is a :class:`ConfigError` naming the endpoint."""
        try:
            self._check_model()
            if self.endpoint.mode in ("auto", "completions"):
                try:
                    self._widest_logprobs()
                    self.mode = "completions"
                    self.echo = self._echo_works()
                except EndpointError as exc:
                    if self.endpoint.mode == "completions" or exc.http_status in (401, 403):
                        raise
                    self.mode = "chat"
            if self.mode == "chat":
                self._chat_logprobs(PROBE_TEXT)
        except EndpointError as exc:
            served = f" (it lists the models {self.served})" if self.served else ""
            raise ConfigError(f"{self.endpoint.spec} cannot score labels: {exc}{served}") from None
        return self.describe()

    def _widest_logprobs(self) -> None:
        """The most next-token log-probs the endpoint gives (:data:`LOGPROBS_TRIED`): a candidate outside them is
        scored at the last one listed, so more is closer to the in-process scorer (OpenAI's own API allows 5)."""
        for k in LOGPROBS_TRIED:
            self.top_logprobs = k
            try:
                if len(self._first_token_logprobs(PROBE_TEXT)) >= min(k, 5):
                    return
            except EndpointError as exc:
                if exc.http_status not in (400, 422) or k == LOGPROBS_TRIED[-1]:
                    raise

    def describe(self) -> str:
        where = self.endpoint.spec
        if self.mode == "completions" and self.echo:
            return (
                f"{where}: /v1/completions, next-token log-probs (top {self.top_logprobs}); candidates tokenized by "
                "echo, one call per row, and one more per token where candidates share their first tokens"
            )
        if self.mode == "completions":
            return (
                f"{where}: /v1/completions, next-token log-probs (top {self.top_logprobs}); no echo to tokenize the "
                "candidates, so a candidate of several tokens is scored by its whole text as one token"
            )
        k = min(self.top_logprobs, TOP_LOGPROBS)
        return (
            f"{where}: /v1/chat/completions, top-{k} first-token log-probs; candidates that share a first token are "
            f"not told apart, one outside the top {k} gets the last one's log-prob"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # ---- scoring

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[str], calibrate: bool | None = None) -> ScoreResult:
        """Probabilities of ``candidates`` after each prompt (softmax over candidates), rows sent concurrently."""
        cands = validate_candidates(candidates)
        calibrate = self.calibrate if calibrate is None else calibrate
        rows = [self._cut(p) for p in prompts]
        logp = np.array(list(self._pool.map(lambda r: self._score_row(r[0], cands), rows)), dtype=np.float64)
        logp = logp.reshape(len(rows), len(cands))
        raw = _softmax(logp) if len(rows) else logp
        probs = raw
        if calibrate and len(rows):
            probs = raw.copy()
            for i, (p, _) in enumerate(rows):
                probs[i] = contextual_calibration(raw[i], self._content_free_prior(p.prefix, p.suffix, cands))
        truncated = np.array([cut for _, cut in rows], dtype=bool)
        return ScoreResult(probs=probs.astype(np.float32), truncated=truncated, raw_probs=raw.astype(np.float32))

    def _cut(self, prompt: Prompt) -> tuple[Prompt, bool]:
        if len(prompt.content) <= self.max_content_chars:
            return prompt, False
        return Prompt(prompt.prefix, prompt.content[: self.max_content_chars], prompt.suffix), True

    def _score_row(self, prompt: Prompt, cands: tuple[str, ...]) -> np.ndarray:
        suffix, _ = answer_text(prompt.suffix, "")
        context = prompt.prefix + prompt.content + suffix
        answers = [answer_text(prompt.suffix, c)[1] for c in cands]
        if self.mode == "chat":
            return _by_first_token(self._chat_logprobs(context), [a.strip() for a in answers])
        tokens = self._candidate_tokens(suffix, answers)
        return self._score_tokens(context, unique_prefixes(tokens))

    def _score_tokens(self, context: str, seqs: Sequence[tuple[str, ...]]) -> np.ndarray:
        """Each token sequence's summed log-probs after ``context``, a next-token call per trie node (the candidates'
        shared prefixes are asked once): one call per row when the candidates' first tokens differ."""
        tops: dict[tuple[str, ...], dict[str, float]] = {}
        out = []
        for seq in seqs:
            total = 0.0
            for i, token in enumerate(seq):
                top = tops.get(seq[:i])
                if top is None:
                    top = tops[seq[:i]] = self._first_token_logprobs(context + "".join(seq[:i]))
                total += top.get(token, min(top.values(), default=0.0))
            out.append(total)
        return np.array(out, dtype=np.float64)

    def _content_free_prior(self, prefix: str, suffix: str, cands: tuple[str, ...]) -> np.ndarray:
        key = (prefix, suffix, cands)
        prior = self._prior.get(key)
        if prior is None:
            rows = [self._score_row(Prompt(prefix, cf, suffix), cands) for cf in self.content_free]
            prior = np.maximum(np.mean([_softmax(r[None, :])[0] for r in rows], axis=0), 1e-12)
            _bounded_put(self._prior, key, prior)
        return prior

    # ---- calls

    def _first_token_logprobs(self, text: str) -> dict[str, float]:
        body = {"prompt": text, "max_tokens": 1, "logprobs": self.top_logprobs, "temperature": 0}
        data = self.client.post("/completions", body)
        try:
            top = data["choices"][0]["logprobs"]["top_logprobs"][0]
            return {str(k): float(v) for k, v in top.items()}
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            raise EndpointError(f"{self.endpoint.spec}: /completions gave no top log-probs") from None

    def _echo(self, text: str) -> tuple[list[str], list[int], list[float | None]]:
        body = {"prompt": text, "max_tokens": 1, "logprobs": 0, "echo": True, "temperature": 0}
        data = self.client.post("/completions", body)
        try:
            lp = data["choices"][0]["logprobs"]
            return list(lp["tokens"]), [int(o) for o in lp["text_offset"]], list(lp["token_logprobs"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise EndpointError(f"{self.endpoint.spec}: /completions with echo gave no token log-probs") from None

    def _echo_works(self) -> bool:
        try:
            tokens, offsets, _ = self._echo(PROBE_TEXT)
        except EndpointError:
            return False
        return len(tokens) > 2 and len(offsets) == len(tokens)

    def _candidate_tokens(self, suffix: str, answers: list[str]) -> tuple[tuple[str, ...], ...]:
        """Each answer's tokens as the endpoint splits ``suffix + answer`` (cached per frame); without echo, the
        answer's first word stands for its first token."""
        key = (suffix, tuple(answers))
        found = self._tokens.get(key)
        if found is None:
            if self.echo:
                found = tuple(_tokens_after(*self._echo(suffix + a)[:2], len(suffix), len(suffix + a)) for a in answers)
            else:
                found = tuple((a,) for a in answers)
            _bounded_put(self._tokens, key, found)
        return found

    def _chat_logprobs(self, text: str) -> dict[str, float]:
        body = {
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 1,
            "logprobs": True,
            "top_logprobs": min(self.top_logprobs, TOP_LOGPROBS),
            "temperature": 0,
        }
        data = self.client.post("/chat/completions", body)
        try:
            entries = data["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            return {str(e["token"]): float(e["logprob"]) for e in entries}
        except (KeyError, IndexError, TypeError, ValueError):
            raise EndpointError(f"{self.endpoint.spec}: /chat/completions gave no top log-probs") from None

    def _check_model(self) -> None:
        try:
            data = self.client.get("/models")
        except EndpointError as exc:
            if exc.http_status in (404, 405):
                return  # no model list here; the scoring probe is the check
            raise
        # Not a check: some servers answer any model name (llama.cpp's lists its GGUF path); the scoring probe is one.
        self.served = [m.get("id") for m in data.get("data", []) if isinstance(m, dict)][:10]


def _tokens_after(tokens: list[str], offsets: list[int], start: int, end: int) -> tuple[str, ...]:
    """The echoed tokens that cover text from ``start`` to ``end`` (a token across ``start`` counts as the first)."""
    out = tuple(t for t, o in zip(tokens, offsets, strict=False) if o < end and o + len(t) > start)
    if not out:
        raise ConfigError(f"the endpoint's echo gave no tokens for the answer at {start}-{end}")
    return out


def _by_first_token(top: dict[str, float], answers: list[str]) -> np.ndarray:
    """Each answer's log-prob: the most probable listed token that begins it (case-sensitive first, then not)."""
    floor = min(top.values()) if top else 0.0
    out = []
    for answer in answers:
        hits = [lp for tok, lp in top.items() if tok.strip() and answer.startswith(tok.strip())]
        if not hits:
            hits = [lp for tok, lp in top.items() if tok.strip() and answer.lower().startswith(tok.strip().lower())]
        out.append(max(hits) if hits else floor)
    return np.array(out, dtype=np.float64)


def endpoint_from_parameters(params: dict[str, str], model_name: str, environ=None) -> Endpoint:
    """The endpoint a remote LLM model's config names (``configgen.remote_llm_spec``), its URL overridden by
    ``$CASCADE_<MODEL>_URL`` where set (a Helm value points a built repository at another endpoint)."""
    import os

    from cascade import contract

    environ = os.environ if environ is None else environ

    def number(key: str, kind, default):
        try:
            return kind(params.get(key, default))
        except ValueError:
            raise ConfigError(f"{model_name}: parameter {key}={params.get(key)!r} is not a number") from None

    endpoint = Endpoint.parse(
        params[contract.CFG_LLM_ENDPOINT],
        key_env=params.get(contract.CFG_KEY_ENV, DEFAULT_KEY_ENV),
        concurrency=number(contract.CFG_CONCURRENCY, int, "4"),
        timeout_s=number(contract.CFG_TIMEOUT_S, float, "60"),
        retries=number(contract.CFG_RETRIES, int, "4"),
        verify_tls=params.get(contract.CFG_VERIFY_TLS, "true").lower() != "false",
        mode=params.get(contract.CFG_SCORING_MODE, "auto"),
    )
    return endpoint.with_url(environ.get(contract.LLM_URL_ENV.format(tier=model_name.upper())))
