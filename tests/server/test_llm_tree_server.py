"""The candidate trie (cascade.llm.trie) with the real model's decodes (SmolLM2)."""

from __future__ import annotations

import numpy as np
import pytest

# --------------------------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def scorer():
    from cascade.llm.gguf import MODEL_SMOLLM2, gguf_path
    from cascade.llm.scorer import LlamaScorer

    return LlamaScorer(
        gguf_path(MODEL_SMOLLM2 + ":f16"), n_ctx=512, n_threads=1, calibrate=False, candidate_scoring="whole", beam=None
    )


LABELS = ["card_arrival", "card_linking", "exchange_rate", "card_payment_wrong_exchange_rate", "request_refund",
          "Refund_not_showing_up", "reverted_card_payment?", "lost_or_stolen_card", "lost_or_stolen_phone"]  # fmt: skip


def test_trie_decodes_match_one_token_at_a_time(scorer):
    """Batched trie levels give the log-probs of single-token decodes (up to the kernels' rounding)."""
    from cascade.bench.labels import sequential_logprobs
    from cascade.llm.prompts import PromptTemplate

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

    from cascade.llm.prompts import Prompt

    scorer.beam = None
    scorer.score([Prompt("Query: ", "where is my card", "\nIntent:")], LABELS)
    mem = scorer._llm._ctx.memory
    assert llama_cpp.llama_memory_seq_pos_max(mem, 0) == scorer._llm.n_tokens - 1
    assert all(llama_cpp.llama_memory_seq_pos_max(mem, s) == -1 for s in range(1, 40))
