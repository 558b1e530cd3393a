"""Label candidates scored as a token trie: one batched llama.cpp decode per trie level, not one per token.

A candidate of several tokens is scored teacher-forced (its tokens' summed log-probs after the row's context).
Candidates share their leading tokens (``refund_not_received`` / ``refund_request``), so they form a trie; every
node of one level is evaluated in the same ``llama_decode``, each in its own KV sequence that sees the row's
context and the node's ancestors (``llama_memory_seq_cp`` adds a sequence id to the cells; with a unified KV
cache nothing is copied). A decode of a few tokens costs about what a decode of one costs on CPU (the weights
are read once), so a 77-label task pays one pass per level instead of one per trie node.

``beam`` bounds the nodes evaluated per level: the most probable prefixes are kept and the candidates below a
dropped prefix get probability 0. Levels no wider than ``beam`` are exact; the accuracy cost of a narrower beam
is measured by ``cascade.bench.labels``.

No Triton import here; :class:`cascade.llm.scorer.LlamaScorer` drives it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Path = tuple[int, ...]
#: Evaluates trie nodes (token paths after the context) and returns each one's next-token log-probs.
DecodeLevel = Callable[[list[Path]], list[np.ndarray]]


def trie_logprobs(
    lp0: np.ndarray, candidates: Sequence[Path], decode_level: DecodeLevel, beam: int | None
) -> np.ndarray:
    """Each candidate's summed log-prob after the context (``-inf`` below a prefix the beam dropped).

    ``lp0``: next-token log-probs after the context. ``decode_level`` is called once per trie level with the
    nodes kept at that level, parents before children.
    """
    out = np.full(len(candidates), -np.inf)
    proper = {c[:t] for c in candidates for t in range(1, len(c))}  # nodes whose children are scored
    after: dict[Path, np.ndarray] = {(): lp0}
    score: dict[Path, float] = {(): 0.0}
    frontier: list[Path] = [()]
    while frontier:
        children: dict[Path, float] = {}
        for path in frontier:
            for c in candidates:
                if len(c) > len(path) and c[: len(path)] == path:
                    child = c[: len(path) + 1]
                    children.setdefault(child, score[path] + float(after[path][child[-1]]))
        for j, c in enumerate(candidates):
            if c in children:
                out[j] = children[c]
        nxt = sorted((c for c in children if c in proper), key=children.__getitem__, reverse=True)
        if beam is not None:
            nxt = nxt[:beam]
        if not nxt:
            break
        for path, lp in zip(nxt, decode_level(nxt), strict=True):
            after[path], score[path] = lp, children[path]
        frontier = nxt
    return out


class LevelDecoder:
    """The llama.cpp side: trie nodes as sequences 1.. of a context whose sequence 0 holds the row's context.

    Only the current level's sequences are alive: once a level's nodes are decoded, their parents' sequence
    ids are removed (the parents' cells stay, held by the children's ids).
    """

    def __init__(self, ctx, n_vocab: int, max_seqs: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._ctx = ctx
        self.n_vocab = n_vocab
        self._ids = range(1, max_seqs)  # sequence 0 is the context
        self.max_width = (max_seqs - 1) // 2  # a level's ids and its parents' are alive together for a moment
        self._batch = llama_cpp.llama_batch_init(self.max_width, 0, 1)
        self._seq: dict[Path, int] = {}

    def close(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None

    def __del__(self) -> None:
        self.close()

    def start(self, n_context: int) -> None:
        """A new row whose context occupies positions ``0 .. n_context - 1`` of sequence 0."""
        self.n_context = n_context
        self._seq = {(): 0}

    def decode(self, nodes: list[Path]) -> list[np.ndarray]:
        if len(nodes) > self.max_width:
            raise ValueError(f"{len(nodes)} trie nodes in one level; at most {self.max_width}")
        lib, mem = self._lib, self._ctx.memory
        parents = {node[:-1] for node in nodes}
        used = set(self._seq.values())
        free = [s for s in self._ids if s not in used]
        batch = self._batch
        for i, node in enumerate(nodes):
            sid = free[i]
            lib.llama_memory_seq_cp(mem, self._seq[node[:-1]], sid, -1, -1)  # context + ancestors, visible
            self._seq[node] = sid
            batch.token[i] = node[-1]
            batch.pos[i] = self.n_context + len(node) - 1
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = sid
            batch.logits[i] = 1
        batch.n_tokens = len(nodes)
        for parent in parents - {()}:  # their children's ids now hold their cells
            lib.llama_memory_seq_rm(mem, self._seq.pop(parent), -1, -1)
        if lib.llama_decode(self._ctx.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed on a candidate level")
        out = []
        for i in range(len(nodes)):
            logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx.ctx, i), shape=(self.n_vocab,))
            logits = logits.astype(np.float64)
            top = logits.max()
            out.append(logits - (top + np.log(np.exp(logits - top).sum())))
        return out

    def finish(self) -> None:
        """Drop every trie sequence: the KV cache holds the row's context (sequence 0) only."""
        for path, sid in self._seq.items():
            if path:
                self._lib.llama_memory_seq_rm(self._ctx.memory, sid, -1, -1)
        self._seq = {(): 0}
