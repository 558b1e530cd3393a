"""Many labels: how fast, and how well, an LLM tier scores a 77-label task (``make bench-labels``).

``python -m cascade.bench.labels [--model M] [--threads N] [--beams none 16 8 4] [--sequential-rows 5]``

The rows are ``bench/data/intents77.csv``: one customer query per intent, written for this benchmark, whose
labels are the 77 intent names of Banking77 (Casanueva et al. 2020) as a user would pass them to
``cascade task create --labels``: ``card_arrival``, ``Refund_not_showing_up``, ``reverted_card_payment?``...
The prompt is what ``task create`` builds from a plain question (:func:`cascade.tasks.prompt_from_question`).

Each mode ``<scoring>:<beam>`` scores every row through :class:`cascade.llm.scorer.LlamaScorer`:
- scoring ``whole`` (every token of a label) or ``prefix`` (up to the first token no other label shares);
- beam ``none``: the whole candidate trie, a level per decode (exact); ``16``, ``8``, ``4``: that many trie
  nodes per level (the candidates below a dropped prefix get probability 0);
- ``--sequential-rows``: one single-token decode per trie node, as the scorer did before (the "before" figure).
It reports rows/s, accuracy against the written labels and agreement with the first mode. ``--served`` also
labels the rows the way ``cascade task create`` does: through a real tritonserver's ``llm_large`` (its
``contract.LLM_INSTANCES`` instances, threads sized by ``cascade.runtime.sizing``), with the scorer's defaults.
JSON goes to ``bench/results/labels-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cascade import contract
from cascade.paths import BENCH_DATA_DIR, RESULTS_DIR
from cascade.results import save_result
from cascade.runtime.sizing import llm_threads

DATA = BENCH_DATA_DIR / "intents77.csv"
QUESTION = "Which banking intent is this customer query about?"
DEFAULT_MODEL = "qwen2.5-coder-1.5b"


def load_rows(path: Path = DATA) -> tuple[list[str], list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def sequential_logprobs(scorer, enc) -> np.ndarray:
    """The scorer's former path: each trie node's next-token log-probs from its own single-token decode."""
    cache = {(): scorer._eval_logprobs(enc.context)}
    out = np.empty(len(enc.candidates))
    for j, tokens in enumerate(enc.candidates):
        total = 0.0
        for t in range(len(tokens)):
            lp = cache.get(tokens[:t])
            if lp is None:
                lp = cache[tokens[:t]] = scorer._eval_logprobs(enc.context + tokens[:t])
            total += float(lp[tokens[t]])
        out[j] = total
    return out


def run(model: str, threads: int, modes: list[str], sequential_rows: int, rows: int | None) -> dict:
    from cascade.llm.gguf import gguf_path
    from cascade.llm.prompts import PromptTemplate
    from cascade.llm.scorer import LlamaScorer
    from cascade.tasks import prompt_from_question

    texts, gold = load_rows()
    texts, gold = texts[:rows], gold[:rows]
    labels = sorted(set(load_rows()[1]), key=load_rows()[1].index)
    instruction, template = prompt_from_question(QUESTION, labels)
    prompt = PromptTemplate(template=template, verbalizations=tuple(labels), instruction=instruction)
    scorer = LlamaScorer(gguf_path(model), n_ctx=2048, n_threads=threads, calibrate=False)
    prompts = [prompt.format(t) for t in texts]
    scorer.score(prompts[:1], labels)  # the instruction's KV (the label list) is evaluated once, not timed
    gold_idx = np.array([labels.index(g) for g in gold])
    results, exact = [], None
    for mode in modes:
        scoring, _, beam = mode.partition(":")
        scorer.candidate_scoring, scorer.beam = scoring, (None if beam in ("", "none") else int(beam))
        start = time.perf_counter()
        pred = scorer.score(prompts, labels).probs.argmax(axis=1)
        wall = time.perf_counter() - start
        exact = pred if exact is None else exact
        results.append(_row(mode, pred, gold_idx, exact, len(prompts), wall))
        print(_line(results[-1]), flush=True)
    if sequential_rows:
        scorer.candidate_scoring = "whole"
        start = time.perf_counter()
        pred = np.array(
            [sequential_logprobs(scorer, scorer.encode(p, labels)).argmax() for p in prompts[:sequential_rows]]
        )
        wall = time.perf_counter() - start
        ref = exact[:sequential_rows] if exact is not None else None
        results.append(_row("whole:sequential", pred, gold_idx[:sequential_rows], ref, sequential_rows, wall))
        print(_line(results[-1]), flush=True)
    return {
        "benchmark": "labels",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": model,
        "n_threads": threads,
        "labels": len(labels),
        "rows": len(prompts),
        "data": "bench/data/intents77.csv",
        "question": QUESTION,
        "prompt": {"instruction": instruction, "template": template},
        "load_average_1m_end": os.getloadavg()[0],
        "results": results,
    }


def served(model_rows: int) -> dict:
    """Rows/s of the task-create path: ``ServerTeacher`` against ``llm_large`` in a real tritonserver."""
    import tempfile

    from cascade.server.launcher import ServerOptions, TritonServer, free_ports
    from cascade.tasks import prompt_from_question
    from cascade_client import CascadeClient
    from cascade_export.build.llm_tiers import LLM_ROLES, ensure_llms
    from cascade_export.distill.teachers import ServerTeacher

    texts, gold = load_rows()
    labels = sorted(set(gold), key=gold.index)
    texts, gold = (
        (texts * (model_rows // len(texts) + 1))[:model_rows],
        (gold * (model_rows // len(gold) + 1))[:model_rows],
    )
    instruction, template = prompt_from_question(QUESTION, labels)
    prompt = {"instruction": instruction, "template": template, "verbalizations": labels, "calibrate": False}
    with tempfile.TemporaryDirectory() as tmp:
        ensure_llms(Path(tmp))
        http, grpc, metrics = free_ports(3)
        opts = ServerOptions(repository=Path(tmp), http_port=http, grpc_port=grpc, metrics_port=metrics)
        with TritonServer(opts) as server, CascadeClient(server.grpc_url, timeout_s=600) as client:
            teacher = ServerTeacher(client, prompt)
            teacher.label(np.arange(2), texts[:2])  # the label list's KV in each instance, not timed
            start = time.perf_counter()
            pred = np.concatenate(
                [teacher.label(np.arange(i, i + 32), texts[i : i + 32]) for i in range(0, len(texts), 32)]
            )
            wall = time.perf_counter() - start
    gold_idx = np.array([labels.index(g) for g in gold])
    row = _row("served", pred, gold_idx, None, len(texts), wall)
    print(_line(row), flush=True)
    return row | {
        "model": LLM_ROLES[contract.TIER_LLM_LARGE],
        "instances": contract.LLM_INSTANCES,
        "threads": llm_threads(),
    }


def _row(mode, pred, gold, exact, n, wall) -> dict:
    return {
        "mode": mode,
        "rows": int(n),
        "wall_s": round(wall, 2),
        "rows_per_s": round(n / wall, 3),
        "accuracy": round(float((pred == gold).mean()), 3),
        "agreement_with_first": None if exact is None else round(float((pred == exact[: len(pred)]).mean()), 3),
    }


def _line(r: dict) -> str:
    agree = "" if r["agreement_with_first"] is None else f"  agrees with the first {r['agreement_with_first']:.3f}"
    return f"  {r['mode']:17s} {r['rows']:3d} rows {r['rows_per_s']:6.2f} rows/s  accuracy {r['accuracy']:.3f}{agree}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (the server's on 2 cores: 1)")
    parser.add_argument(
        "--modes", nargs="+", default=["prefix:none", "prefix:16", "prefix:8", "prefix:4", "whole:8"],
        help="<whole|prefix>:<beam|none>; agreement is measured against the first",
    )  # fmt: skip
    parser.add_argument("--sequential-rows", type=int, default=3, help="rows scored the former way (slow)")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--served", type=int, default=0, help="also label this many rows through a real server")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.model, args.threads, args.modes, args.sequential_rows, args.rows)
    if args.served:
        result["served"] = served(args.served)
    if not args.no_save:
        print(f"saved {save_result('labels', result, RESULTS_DIR)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
