"""A gate request's inputs (cascade.gate.inputs): request options, TEXT decoding, EMBEDDING checks, and the
Triton status codes of their errors."""

import numpy as np
import pytest

from cascade import contract
from cascade.errors import InvalidInput, TierFailure
from cascade.gate.arrays import host
from cascade.gate.inputs import RequestOptions, check_embeddings, decode_texts


def test_request_options_parse_names_numbers_and_strings():
    opts = RequestOptions.parse({"max_tier": "logreg", "return_probs": "true"}, (0, 1, 2))
    assert (opts.min_tier, opts.max_tier, opts.return_probs) == (0, 0, True)
    assert RequestOptions.parse({"min_tier": 2}, (0, 1, 2)).min_tier == 2
    assert RequestOptions.parse({}, (0, 1)) == RequestOptions()


@pytest.mark.parametrize(
    "params, message",
    [
        ({"max_tier": 9}, "unknown tier"),
        ({"min_tier": 2, "max_tier": 1}, "above max_tier"),
        ({"min_tier": 3}, "no enabled tier"),
        ({"return_probs": "maybe"}, "boolean"),
        ({"on_tier_failure": "retry"}, "on_tier_failure must be one of"),
        ({"temperature": 0.1}, "unknown request parameters"),
    ],
)
def test_bad_request_options(params, message):
    with pytest.raises(InvalidInput) as info:
        RequestOptions.parse(params, (0, 1, 2))
    assert message in str(info.value)


def test_decode_texts_checks_and_truncates():
    assert decode_texts([b"good", "fine"]) == ["good", "fine"]
    assert len(decode_texts([b"x" * 1_000_000])[0]) == contract.MAX_TEXT_CHARS
    with pytest.raises(InvalidInput, match=r"TEXT\[1\] is empty"):
        decode_texts([b"ok", b"   "])
    with pytest.raises(InvalidInput, match=r"TEXT\[0\] is not valid UTF-8"):
        decode_texts([b"\xff\xfe bad"])


@pytest.mark.parametrize(
    "raw, error",
    [
        ([b"caf\xc3\xa9", b"ok\xc3"], r"TEXT\[1\] is not valid UTF-8"),  # a cut sequence before the separator
        ([b"ok", b"\xa9ok"], r"TEXT\[1\] is not valid UTF-8"),  # a stray continuation byte after it
        ([b"ok", b"", b"x"], r"TEXT\[1\] is empty"),
    ],
)
def test_decode_texts_joined_path_names_the_bad_row(raw, error):
    with pytest.raises(InvalidInput, match=error):
        decode_texts(raw)


def test_decode_texts_keeps_rows_apart():
    rows = [b"caf\xc3\xa9", b"a\x00b", b"plain", "a str row"]
    assert decode_texts(rows) == ["café", "a\x00b", "plain", "a str row"]
    assert decode_texts([b"one", b"two"]) == ["one", "two"]
    assert decode_texts(np.array([b"x" * 9000, b"y"], dtype=np.object_)) == ["x" * contract.MAX_TEXT_CHARS, "y"]


def test_check_embeddings(at):
    good = at.zeros((2, contract.EMBEDDING_DIM))
    assert check_embeddings(good, 2) is good  # float32 already: no copy, same device
    with pytest.raises(InvalidInput, match="rows but TEXT has"):
        check_embeddings(good, 3)
    with pytest.raises(InvalidInput, match="shape"):
        check_embeddings(at.zeros((2, 3)), 2)
    bad = np.zeros((3, contract.EMBEDDING_DIM), np.float32)
    bad[1, 5], bad[2, 0] = np.nan, np.inf
    with pytest.raises(InvalidInput, match="row 1 holds NaN"):
        check_embeddings(at.asarray(bad), 3)
    huge = np.full((1, contract.EMBEDDING_DIM), 3e38, np.float32)  # finite values whose row sum overflows
    assert host(check_embeddings(at.asarray(huge), 1))[0, 0] == np.float32(3e38)


def test_errors_map_to_triton_status_codes():
    from cascade.errors import triton_error

    class FakeTritonError:
        INTERNAL, INVALID_ARG, UNAVAILABLE, NOT_FOUND = "INTERNAL", "INVALID_ARG", "UNAVAILABLE", "NOT_FOUND"

        def __init__(self, message, code):
            self.message, self.code = message, code

    class FakePbUtils:
        TritonError = FakeTritonError

    err = triton_error(FakePbUtils, InvalidInput("TEXT[0] is empty"))
    assert (err.message, err.code) == ("TEXT[0] is empty", "INVALID_ARG")
    assert triton_error(FakePbUtils, TierFailure("down")).code == "UNAVAILABLE"
    err = triton_error(FakePbUtils, KeyError("x"), "scoring failed")
    assert (err.message, err.code) == ("scoring failed: 'x'", "INTERNAL")


def test_request_chooses_what_a_tier_failure_gives():
    enabled = (0, 1, 2)
    assert RequestOptions.parse({}, enabled).on_tier_failure == "best_effort"
    assert RequestOptions.parse({}, enabled, on_tier_failure="error").on_tier_failure == "error"
    assert RequestOptions.parse({"on_tier_failure": "error"}, enabled).on_tier_failure == "error"
