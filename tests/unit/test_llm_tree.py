"""The candidate trie (cascade.llm.trie): exact against a brute-force sum, and beams (the real model's decodes:
tests/server/test_llm_tree_server.py)."""

from __future__ import annotations

import numpy as np

from cascade.llm.trie import trie_logprobs

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
