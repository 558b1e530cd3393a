"""The candidate trie (cascade.llm_tree): exact against a brute-force sum, beams, and the real model's decodes."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.llm_tree import trie_logprobs

VOCAB = 12


def fake_logprobs(path: tuple[int, ...]) -> np.ndarray:
    """Next-token log-probs that depend on the whole path, as a model's do."""
    logits = np.random.default_rng(abs(hash(path)) % 2**32).normal(size=VOCAB)
    return logits - np.log(np.exp(logits).sum())


def brute_force(candidates):
    return np.array([sum(fake_logprobs(c[:t])[c[t]] for t in range(len(c))) for c in candidates])


CANDIDATES = [(1,), (1, 2), (1, 2, 3), (1, 4), (5, 6, 7, 8), (5, 6, 9), (10,), (11, 2, 2)]


def test_exact_trie_equals_brute_force_and_decodes_each_level_once():
    levels = []

    def decode(nodes):
        levels.append(list(nodes))
        return [fake_logprobs(n) for n in nodes]

    got = trie_logprobs(fake_logprobs(()), CANDIDATES, decode, beam=None)
    np.testing.assert_allclose(got, brute_force(CANDIDATES))
    # every proper prefix is decoded exactly once, a level per call, parents before children
    decoded = [n for level in levels for n in level]
    assert sorted(decoded) == sorted({c[:t] for c in CANDIDATES for t in range(1, len(c))})
    assert [len({len(n) for n in level}) for level in levels] == [1] * len(levels)
    assert [len(level[0]) for level in levels] == [1, 2, 3]


def test_beam_keeps_the_most_probable_prefixes_and_zeroes_the_rest():
    widths = []

    def decode(nodes):
        widths.append(len(nodes))
        return [fake_logprobs(n) for n in nodes]

    exact = brute_force(CANDIDATES)
    got = trie_logprobs(fake_logprobs(()), CANDIDATES, decode, beam=1)
    assert max(widths) == 1
    finite = np.isfinite(got)
    np.testing.assert_allclose(got[finite], exact[finite])
    # single-token candidates are complete at the first level whatever the beam
    assert finite[CANDIDATES.index((10,))] and finite[CANDIDATES.index((1,))]
    first = fake_logprobs(())
    kept = max({c[0] for c in CANDIDATES if len(c) > 1}, key=lambda t: first[t])
    assert all(finite[j] == (c[0] == kept or len(c) == 1) for j, c in enumerate(CANDIDATES) if len(c) <= 2)


# --------------------------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def scorer():
    from cascade.gguf import MODEL_SMOLLM2, gguf_path
    from cascade.llm import LlamaScorer

    return LlamaScorer(
        gguf_path(MODEL_SMOLLM2 + ":f16"), n_ctx=512, n_threads=1, calibrate=False, candidate_scoring="whole", beam=None
    )


LABELS = ["card_arrival", "card_linking", "exchange_rate", "card_payment_wrong_exchange_rate", "request_refund",
          "Refund_not_showing_up", "reverted_card_payment?", "lost_or_stolen_card", "lost_or_stolen_phone"]  # fmt: skip


def test_trie_decodes_match_one_token_at_a_time(scorer):
    """Batched trie levels give the log-probs of single-token decodes (up to the kernels' rounding)."""
    from cascade.bench_labels import sequential_logprobs
    from cascade.llm import PromptTemplate

    template = PromptTemplate(template="Query: {text}\nIntent:", verbalizations=tuple(LABELS))
    for text in ("I still haven't received my new card", "my phone was stolen"):
        prompt = template.format(text)
        enc = scorer.encode(prompt, LABELS)
        sequential = sequential_logprobs(scorer, enc)
        scorer.beam = None
        trie = scorer._score_encoded(enc)
        assert np.abs(trie - sequential).max() < 0.2, (trie, sequential)
        assert trie.argmax() == sequential.argmax()
        scorer.beam = 2
        narrow = scorer._score_encoded(enc)
        kept = np.isfinite(narrow)
        assert 0 < kept.sum() < len(LABELS)  # the beam dropped some candidates, and scored the others alike
        assert np.abs(narrow[kept] - trie[kept]).max() < 0.2


def test_cache_holds_only_the_row_after_scoring(scorer):
    """The trie's sequences are gone after a row: the next row reuses sequence 0's cells, nothing else."""
    import llama_cpp

    from cascade.llm import Prompt

    scorer.beam = None
    scorer.score([Prompt("Query: ", "where is my card", "\nIntent:")], LABELS)
    mem = scorer._llm._ctx.memory
    assert llama_cpp.llama_memory_seq_pos_max(mem, 0) == scorer._llm.n_tokens - 1
    assert all(llama_cpp.llama_memory_seq_pos_max(mem, s) == -1 for s in range(1, 40))
