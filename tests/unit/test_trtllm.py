"""The large tier's scoring logic on GPU (``cascade.llm.trtllm``), checked without a GPU: logits -> PROBS with
recorded arrays, prompt assembly and candidate tokens with real tokenizers."""

import numpy as np
import pytest
from trtllm_shared import bpe, minilm, minilm_dir

from cascade.errors import ConfigError, InvalidInput
from cascade.llm.prompts import Prompt, PromptTemplate
from cascade.llm.trtllm import (
    HFTokenizer,
    LogitsError,
    calibrate,
    candidate_first_tokens,
    check_template,
    encode_prompt,
    first_step_logits,
    greedy_mismatch,
    load_tokenizer,
    probs_from_generation_logits,
)

# Recorded generation_logits: 1 row, 1 beam, 3 steps, vocab of 10. Step 0 is the one that counts.
LOGITS_3x10 = np.array(
    [
        [
            [
                [0.5, -1.0, 2.0, 0.0, 1.0, 3.0, -2.0, 0.25, 1.5, -0.5],
                [9.0, 9.0, -9.0, 9.0, 9.0, -9.0, 9.0, 9.0, 9.0, 9.0],
                [-4.0, 4.0, 4.0, -4.0, 4.0, 4.0, -4.0, 4.0, 4.0, 4.0],
            ]
        ]
    ],
    dtype=np.float32,
)


def softmax(x):
    e = np.exp(np.asarray(x, dtype=np.float64) - np.max(x))
    return e / e.sum()


# --------------------------------------------------------------------------------------------- logits -> PROBS


def test_probs_come_from_the_first_generation_step():
    candidates = [2, 5, 7]
    probs = probs_from_generation_logits(LOGITS_3x10, candidates)
    assert probs.shape == (1, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[0], softmax([2.0, 3.0, 0.25]), rtol=1e-6)
    # the later steps would give other answers (they favour 7 over 2 and 5)
    assert probs[0].argmax() == 1


def test_probs_from_backend_shaped_responses():
    """As the C++ backend answers one scoring request: [1, beams=1, steps=1, vocab], float32."""
    rng = np.random.default_rng(0)
    vocab = 32_000
    rows = [rng.normal(size=(1, 1, 1, vocab)).astype(np.float32) for _ in range(3)]
    ids = [319, 8178, 29871]
    probs = np.concatenate([probs_from_generation_logits(r, ids) for r in rows])
    expected = np.stack([softmax(r[0, 0, 0, ids]) for r in rows])
    np.testing.assert_allclose(probs, expected, rtol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    # a batch of rows in one tensor, and one row without its batch dimension, give the same numbers
    np.testing.assert_allclose(probs_from_generation_logits(np.concatenate(rows), ids), probs, rtol=1e-6)
    np.testing.assert_allclose(probs_from_generation_logits(rows[1][0], ids), probs[1:2], rtol=1e-6)


def test_bad_logits_are_errors():
    with pytest.raises(LogitsError, match="all zero"):
        probs_from_generation_logits(np.zeros((1, 1, 1, 10), np.float32), [1, 2])
    with pytest.raises(LogitsError, match="empty"):
        probs_from_generation_logits(np.zeros((1, 1, 0, 10), np.float32), [1, 2])
    with pytest.raises(LogitsError, match="must be"):
        probs_from_generation_logits(np.ones((10,), np.float32), [1, 2])
    with pytest.raises(LogitsError, match="NaN"):
        probs_from_generation_logits(np.full((1, 1, 1, 10), np.nan, np.float32), [1, 2])
    with pytest.raises(LogitsError, match="vocabulary"):
        probs_from_generation_logits(LOGITS_3x10, [1, 10])
    with pytest.raises(InvalidInput):
        probs_from_generation_logits(LOGITS_3x10, [3, 3])


def test_greedy_mismatch_detects_logits_of_the_wrong_step():
    assert first_step_logits(LOGITS_3x10).argmax() == 5
    assert not greedy_mismatch(LOGITS_3x10, np.array([[[5]]])).any()  # exclude_input_in_output: the new token
    assert not greedy_mismatch(LOGITS_3x10, np.array([[[11, 12, 5]]])).any()  # prompt first, new token last
    assert greedy_mismatch(LOGITS_3x10, np.array([[[0]]])).all()


def test_calibration_divides_out_the_prior():
    probs = np.array([[0.8, 0.2], [0.6, 0.4]], np.float32)
    out = calibrate(probs, np.array([0.8, 0.2]))
    np.testing.assert_allclose(out[0], [0.5, 0.5], rtol=1e-6)
    assert out[1, 1] > 0.5 and np.allclose(out.sum(axis=1), 1.0)


def test_only_the_content_is_truncated():
    tok = minilm()
    prompt = Prompt("Classify the review.\n\nReview: ", "a gripping film " * 200, "\nSentiment:")
    full = encode_prompt(tok, prompt, 10_000)
    assert not full.truncated and len(full.input_ids) > 600
    cut = encode_prompt(tok, prompt, 64)
    assert cut.truncated and len(cut.input_ids) == 64
    head = tok.special_prefix + tok.encode("Classify the review.\n\nReview:")
    tail = tok.encode("\nSentiment:")
    assert cut.input_ids[: len(head)] == head and cut.input_ids[-len(tail) :] == tail
    assert cut.input_ids[len(head) : -len(tail)] == full.input_ids[len(head) : len(head) + 64 - len(head) - len(tail)]
    assert tok.decode(cut.input_ids).startswith("classify the review. review : a gripping film")
    with pytest.raises(InvalidInput, match="max_input_len"):
        encode_prompt(tok, prompt, len(head) + len(tail) - 1)


def test_row_content_cannot_inject_special_tokens():
    wordpiece, byte_bpe = minilm(), bpe()
    sep = 102  # MiniLM's [SEP]
    assert sep in wordpiece.encode("a [SEP] b") and sep not in wordpiece.encode("a [SEP] b", parse_special=False)
    assert sep not in encode_prompt(wordpiece, Prompt("Review: ", "a [SEP] b", ":"), 64).input_ids
    tok = HFTokenizer(byte_bpe)
    marker = byte_bpe.token_to_id("<|im_start|>")
    ids = encode_prompt(tok, Prompt("<|im_start|>Review: ", "x <|im_start|> y", " Sentiment:"), 64).input_ids
    assert ids.count(marker) == 1 and ids[0] == marker  # the template's marker only


def test_candidate_first_tokens_carry_the_leading_space():
    tok = HFTokenizer(bpe())
    firsts = candidate_first_tokens(tok, " Sentiment:", ["positive", "negative"])
    assert [tok.piece(t) for t in firsts] == ["Ġpositive", "Ġnegative"]
    # after a newline the answer starts the line: no space
    assert tok.piece(candidate_first_tokens(tok, "Sentiment:\n", ["positive"])[0])[0] != "Ġ"


def test_verbalizations_sharing_a_first_token_fail_at_load():
    tok = HFTokenizer(bpe())
    with pytest.raises(ConfigError, match="first token"):
        check_template(tok, PromptTemplate("Review: {text} Sentiment:", ("very negative", "very positive")))
    with pytest.raises(InvalidInput, match="first token"):
        candidate_first_tokens(tok, " Sentiment:", ["very negative", "very positive"])
    assert len(check_template(minilm(), PromptTemplate("Review: {text}\nSentiment:", ("negative", "positive")))) == 2


def test_load_tokenizer(tmp_path):
    tok = load_tokenizer(minilm_dir())
    assert tok.special_prefix == (101,) and tok.encode("hello world") == (7592, 2088)
    with pytest.raises(ConfigError):
        load_tokenizer(tmp_path / "missing")
