"""The streaming text endpoint ``llm_generate``: request checks and detokenization, without a model or a server
(the CPU profile streamed by a real tritonserver: tests/server/test_generate_server.py)."""

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from cascade.errors import InvalidInput
from cascade.llm.generate import IncrementalDetokenizer, new_tokens, parse_request, pieces_from_token_stream, with_last

# --------------------------------------------------------------------------------------------- unit


def test_parse_request():
    req = parse_request(np.array([b"Once upon a time"], dtype=np.object_), None, 64, 1024)
    assert req.prompt == "Once upon a time" and req.max_tokens == 64
    assert parse_request(np.array([[b"hi"]], dtype=np.object_), np.array([[8]], np.int32), 64, 1024).max_tokens == 8
    for prompt in (b"", b"   ", b"\xff\xfe"):
        with pytest.raises(InvalidInput):
            parse_request(np.array([prompt], dtype=np.object_), None, 64, 1024)
    with pytest.raises(InvalidInput):
        parse_request(np.array([b"a", b"b"], dtype=np.object_), None, 64, 1024)
    for budget in (0, -1, 1025):
        with pytest.raises(InvalidInput):
            parse_request(np.array([b"hi"], dtype=np.object_), np.array([budget], np.int32), 64, 1024)


def test_with_last_marks_the_final_piece():
    assert list(with_last(["a", "b", "c"])) == [("a", False), ("b", False), ("c", True)]
    assert list(with_last([])) == [("", True)]


@pytest.fixture(scope="module")
def byte_bpe():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(["the film was great", "a dull film"] * 10, trainer)
    return tok


def test_incremental_detokenizer_never_splits_a_character(byte_bpe):
    text = " the film was great — ünïcödé 🎬 ok"
    ids = byte_bpe.encode(text).ids  # the emoji and accents are several byte-level tokens each
    decode = byte_bpe.decode
    detok = IncrementalDetokenizer(decode)
    pieces = [detok.push([i]) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p) > 5


def test_pieces_from_a_recorded_token_stream(byte_bpe):
    """Streamed tensorrt_llm responses: output_ids [1, 1, n_new] with sequence_length [1, 1]."""
    prompt = byte_bpe.encode("Review: the film").ids
    answer = byte_bpe.encode(" was great, a dull film").ids
    end_id = 0
    responses = [answer[:1], answer[1:4], answer[4:], [end_id, 5, 5]]
    stream = [(np.array([[r + [-1]]], np.int32), np.array([[len(r)]], np.int32)) for r in responses]
    batches = (new_tokens(ids, length) for ids, length in stream)
    detok = IncrementalDetokenizer(byte_bpe.decode, context=prompt[-4:])
    pieces = list(pieces_from_token_stream(batches, detok, end_id=end_id))
    assert "".join(pieces) == " was great, a dull film"  # the first piece keeps its leading space
    assert new_tokens(np.array([[[7, 8, -1]]]), None) == [7, 8]
