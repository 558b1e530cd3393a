"""The large tier through an OpenAI-compatible endpoint against the same GGUF in-process (``make bench-remote``).

``python -m cascade.bench.remote [--model qwen2.5-coder-1.5b] [--rows 200] [--concurrency 1 2 4] [--threads 2]``

The rows are the first ``--rows`` SST-2 validation rows with the teacher's prompt of ``tasks/sst2.toml`` (its
few-shot examples drawn from the training split, calibrated). The same GGUF scores them in this process
(:class:`cascade.llm.scorer.LlamaScorer`) and through llama.cpp's own server (:mod:`cascade.llm.local_endpoint`)
with :class:`cascade.llm.remote.RemoteScorer` at each concurrency, as ``cascade label --teacher openai:...`` labels.
Each run reports rows/s, ms per row over the in-process figure (the endpoint's overhead: HTTP, JSON, the server's
sort of the vocabulary for its top log-probs), the tokens the endpoint counted, and agreement with the in-process
answers and probabilities. The two never run at once (each has every thread). JSON goes to
``bench/results/remote-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cascade.results import command_line, now_iso, save_result

DEFAULT_MODEL = "qwen2.5-coder-1.5b"


def main(argv: list[str] | None = None) -> dict:
    from cascade.llm.gguf import gguf_path
    from cascade.llm.local_endpoint import llama_server
    from cascade.llm.openai_http import Endpoint
    from cascade.llm.prompts import PromptTemplate
    from cascade.llm.remote import RemoteScorer
    from cascade.llm.scorer import LlamaScorer
    from cascade.tasks import load_split, load_task
    from cascade_export.distill.teachers import teacher_prompt

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads, in-process and in the server")
    args = p.parse_args(argv)

    task = load_task("sst2")
    template = PromptTemplate.from_json(teacher_prompt(task))
    texts, gold = load_split(task, "validation", limit=args.rows)
    prompts = [template.format(t) for t in texts]
    path = gguf_path(args.model)
    print(f"{args.rows} SST-2 rows, {args.model}, {args.threads} threads: in-process first", flush=True)
    local = LlamaScorer(path, n_ctx=1024, n_threads=args.threads)
    local.score(prompts[:2], template.verbalizations, template.calibrate)  # the shared prefix and the prior, once
    start = time.perf_counter()
    mine = local.score(prompts, template.verbalizations, template.calibrate).probs
    local_s = time.perf_counter() - start
    del local
    in_process = {"rows_per_s": args.rows / local_s, "ms_per_row": 1000 * local_s / args.rows}
    in_process["accuracy"] = float((mine.argmax(1) == np.array(gold)).mean())
    print(f"in-process: {in_process['rows_per_s']:.2f} rows/s, accuracy {in_process['accuracy']:.3f}", flush=True)
    runs = []
    with llama_server(path, n_ctx=1024, n_threads=args.threads) as url:
        for concurrency in args.concurrency:
            scorer = RemoteScorer(Endpoint.parse(f"openai:{args.model}@{url}", concurrency=concurrency))
            mode = scorer.probe()
            scorer.score(prompts[:2], template.verbalizations, template.calibrate)
            used = scorer.client.usage.snapshot()
            start = time.perf_counter()
            theirs = scorer.score(prompts, template.verbalizations, template.calibrate).probs
            wall = time.perf_counter() - start
            after = scorer.client.usage.snapshot()
            scorer.close()
            run = {
                "concurrency": concurrency,
                "rows_per_s": args.rows / wall,
                "ms_per_row": 1000 * wall / args.rows,
                "overhead_ms_per_row": 1000 * wall / args.rows - in_process["ms_per_row"],
                "requests": after["requests"] - used["requests"],
                "prompt_tokens_per_row": (after["prompt_tokens"] - used["prompt_tokens"]) / args.rows,
                "completion_tokens_per_row": (after["completion_tokens"] - used["completion_tokens"]) / args.rows,
                "agreement": float((mine.argmax(1) == theirs.argmax(1)).mean()),
                "mean_abs_prob_diff": float(np.abs(mine - theirs).mean()),
                "accuracy": float((theirs.argmax(1) == np.array(gold)).mean()),
                "mode": mode,
            }
            runs.append(run)
            print(
                f"endpoint, concurrency {concurrency}: {run['rows_per_s']:.2f} rows/s "
                f"(+{run['overhead_ms_per_row']:.0f} ms/row), agreement {run['agreement']:.3f}, "
                f"mean |dp| {run['mean_abs_prob_diff']:.4f}",
                flush=True,
            )
    payload = {
        "benchmark": "remote",
        "when": now_iso(),
        "command": command_line(prog="python -m cascade.bench.remote"),
        "model": args.model,
        "rows": args.rows,
        "threads": args.threads,
        "prompt": template.to_json(),
        "in_process": in_process,
        "endpoint": runs,
    }
    print(f"saved {save_result('remote', payload)}")
    return payload


if __name__ == "__main__":
    main()
