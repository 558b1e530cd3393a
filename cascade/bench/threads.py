"""Measure the llama.cpp thread count of the LLM tiers: ms/row at the old fixed 2 threads and at the sized
count (``cascade.runtime.sizing.llm_threads``), each on an idle machine and with one core busy.

``python -m cascade.bench.threads [--rows 40] [--threads 1 2] [--data-dir DIR]`` (or ``cascade bench threads``)

Each served GGUF (``cascade_export.build.llm_tiers.LLM_ROLES``) scores SST-2 validation rows with its tier's prompt
from ``tasks/sst2.toml`` through :class:`cascade.llm.scorer.LlamaScorer`, one request of ``--batch`` rows at a time,
as the server's ``llm_small`` / ``llm_large`` do (the scorer's own prefix cache, nothing else; one untimed
warm-up row first, as a served model has scored requests before). "busy" runs a CPU hog next to it: a child
Python process spinning ``while True: pass``, stopped by its pid afterwards. JSON goes to
``bench/results/threads-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cascade import contract
from cascade.bench.busy import cpu_hog
from cascade.errors import CascadeError, InvalidInput
from cascade.paths import DEFAULT_DATA_DIR
from cascade.runtime.sizing import llm_threads, server_cores

#: The value every llama.cpp model ran with before sizing.
OLD_THREADS = 2
TASK = "sst2"
LOADS = ("idle", "busy")


def served_prompts(tier: int, rows: int, data_dir: str | None, task_name: str = TASK, split: str = "validation"):
    """The tier's served prompt (few-shot examples drawn from train rows as the build does) over
    ``rows + 1`` rows of ``split`` (the first one is the warm-up)."""
    from cascade.llm.prompts import PromptTemplate
    from cascade.tasks import load_split, load_task
    from cascade_export.build.llm_tiers import draw_few_shot

    task = load_task(task_name)
    prompt = task.llm[tier]
    examples = []
    if prompt.few_shot:
        texts, labels = load_split(task, "train", data_dir, limit=2000)
        rng = np.random.default_rng(0)
        examples = draw_few_shot(texts, np.array(labels), prompt.few_shot, task.n_labels, rng)
    template = PromptTemplate(
        template=prompt.template,
        verbalizations=prompt.verbalizations,
        few_shot=tuple(examples),
        instruction=prompt.instruction,
    )
    texts, _ = load_split(task, split, data_dir, limit=rows + 1)
    return [template.format(t) for t in texts], template.verbalizations, prompt.calibrate


def measure(model: str, threads: int, prompts, cands, calibrate, batch: int, busy: bool) -> tuple[dict, np.ndarray]:
    """ms/row of one (model, threads, load) case, and the probabilities it gave."""
    from cascade.llm.gguf import gguf_path
    from cascade.llm.scorer import LlamaScorer
    from cascade_export.build.llm_tiers import LLM_N_CTX

    scorer = LlamaScorer(gguf_path(model), n_ctx=LLM_N_CTX, n_threads=threads)
    try:
        scorer.score(prompts[:1], cands, calibrate)  # warm-up: the prompt's prefix and content-free prior
        timed = prompts[1:]
        with cpu_hog() if busy else _nothing():
            start = time.perf_counter()
            probs = [scorer.score(timed[i : i + batch], cands, calibrate).probs for i in range(0, len(timed), batch)]
            elapsed = time.perf_counter() - start
            load_1m = os.getloadavg()[0]
    finally:
        del scorer
    row = {
        "model": model,
        "threads": threads,
        "load": "busy" if busy else "idle",
        "rows": len(timed),
        "ms_per_row": elapsed * 1000 / max(1, len(timed)),
        "load_average_1m_end": load_1m,
    }
    return row, np.concatenate(probs)


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def run(
    rows: int = 40,
    threads: list[int] | None = None,
    batch: int = 1,
    data_dir: str | None = None,
    command: str = "python -m cascade.bench.threads",
) -> dict:
    from cascade_export.build.llm_tiers import LLM_ROLES

    if rows < 1 or batch < 1 or any(n < 1 for n in threads or []):
        raise InvalidInput("rows, batch and thread counts must be positive")
    sized = llm_threads()
    counts = sorted(set(threads or [OLD_THREADS, sized]))
    out = []
    for tier, model in LLM_ROLES.items():
        prompts, cands, calibrate = served_prompts(tier, rows, data_dir)
        first = None
        for n in counts:
            for load in LOADS:
                row, probs = measure(model, n, prompts, cands, calibrate, batch, busy=load == "busy")
                first = probs if first is None else first
                row["tier"] = contract.TIER_NAMES[tier]
                row["max_abs_prob_diff_vs_first_case"] = float(np.abs(probs - first).max())
                out.append(row)
                print(f"  {model:17s} threads {n}  {load:4s}  {row['ms_per_row']:7.1f} ms/row", flush=True)
    now = datetime.now(UTC)
    return {
        "benchmark": "threads",
        "when": now.isoformat(timespec="seconds"),
        "date": now.date().isoformat(),
        "command": command,
        "machine": {"cores": server_cores(), "cpu_count": os.cpu_count(), "platform": platform.platform()},
        "task": TASK,
        "rows_per_case": rows,
        "batch": batch,
        "old_threads": OLD_THREADS,
        "sized_threads": sized,
        "llm_threads_env": os.environ.get(contract.LLM_THREADS_ENV),
        "rows": out,
        "note": "busy: one child process spins `while True: pass` during the timed rows; one untimed warm-up "
        "row per case; a fresh LlamaScorer per case",
    }


def print_table(result: dict) -> None:
    print(f"{'model':17s} {'tier':9s} {'threads':>7s} {'load':>5s} {'ms/row':>8s}")
    for r in result["rows"]:
        print(f"{r['model']:17s} {r['tier']:9s} {r['threads']:7d} {r['load']:>5s} {r['ms_per_row']:8.1f}")
    print(f"cores {result['machine']['cores']}; sized llama.cpp threads {result['sized_threads']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cascade.bench.threads", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40, help="SST-2 validation rows per case (default: 40)")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=None, help=f"thread counts (default: {OLD_THREADS} and the sized)"
    )
    parser.add_argument("--batch", type=int, default=1, help="rows per score() call, as in one request (default: 1)")
    parser.add_argument(
        "--data-dir", default=None, help=f"datasets folder (default: $CASCADE_DATA_DIR or {DEFAULT_DATA_DIR})"
    )
    parser.add_argument("--results-dir", type=Path, default=None, help="where the JSON goes (default: bench/results)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    try:
        result = run(args.rows, args.threads, args.batch, args.data_dir, " ".join([parser.prog, *argv]))
    except CascadeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_table(result)
    if not args.no_save:
        from cascade.bench import gate as bench

        print(f"saved {bench.save(result, 'threads', args.results_dir or bench.RESULTS_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
