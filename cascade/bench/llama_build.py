"""Compare llama-cpp-python builds: the large tier's ms/row and answers under each build, on this CPU.

``python -m cascade.bench.llama_build measure --label portable [--rows 100] [--threads 1 2]`` measures the
``llama_cpp`` that this interpreter imports (put another build first with ``PYTHONPATH=<unpacked wheel>``) and writes
``bench/work/llama-build-<label>.json``; ``... combine bench/work/llama-build-*.json`` joins the cases into
``bench/results/llama-build-<timestamp>.json`` with the commit and the machine.

Each case: ``llm_large``'s served prompt (``tasks/<task>.toml``, tier 4) over ``--rows`` rows of SST-2 validation and
AG News test, one row per ``score()`` call as a 1-row request, through :class:`cascade.llm.scorer.LlamaScorer`, a
fresh scorer per thread count after one untimed warm-up row. Recorded per build: ``llama_print_system_info`` (what
the build uses on this CPU), the ``BUILD_INFO`` of its wheelhouse folder when given, ms/row, accuracy against gold,
and the answers, so that the builds' agreement is measured, not assumed. A build with ``GGML_BACKEND_DL`` loads its
CPU variants from its ``lib/`` folder first (``ggml_backend_load_all_from_path``; llama-cpp-python does not).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from cascade import contract
from cascade.bench.threads import served_prompts
from cascade.paths import RESULTS_DIR, WORK_ROOT

TASKS = {"sst2": "validation", "ag_news": "test"}
WORK = WORK_ROOT / "bench" / "work"


def load_backends() -> list[str]:
    """The CPU variant libraries of a ``GGML_BACKEND_DL`` build, loaded from ``llama_cpp/lib`` (none otherwise)."""
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    variants = sorted(p.name for p in lib.glob("libggml-cpu-*.so"))
    if variants:
        ggml = ctypes.CDLL(str(lib / "libggml.so"))
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load_all_from_path(str(lib).encode())
    return variants


def measure(label: str, rows: int, threads: list[int], build_info: Path | None) -> dict:
    import llama_cpp

    from cascade.llm.gguf import gguf_path
    from cascade.llm.scorer import LlamaScorer
    from cascade.tasks import load_split, load_task
    from cascade_export.build.llm_tiers import LLM_N_CTX, LLM_ROLES

    variants = load_backends()
    model = LLM_ROLES[contract.TIER_LLM_LARGE]
    cases = []
    for task_name, split in TASKS.items():
        prompts, cands, calibrate = served_prompts(contract.TIER_LLM_LARGE, rows, None, task_name, split)
        _, gold = load_split(load_task(task_name), split, limit=rows + 1)
        for n in threads:
            scorer = LlamaScorer(gguf_path(model), n_ctx=LLM_N_CTX, n_threads=n)
            scorer.score(prompts[:1], cands, calibrate)
            start = time.perf_counter()
            probs = np.concatenate([scorer.score([p], cands, calibrate).probs for p in prompts[1:]])
            elapsed = time.perf_counter() - start
            del scorer
            answers = probs.argmax(1)
            case = {"task": task_name, "split": split, "threads": n, "rows": len(answers)}
            case |= {"ms_per_row": round(elapsed * 1000 / len(answers), 1), "answers": answers.tolist()}
            case["accuracy_vs_gold"] = round(float((answers == np.array(gold[1:])).mean()), 4)
            case["load_average_1m_end"] = round(os.getloadavg()[0], 2)  # other work on the machine meanwhile
            cases.append(case)
            print(f"  {label:10s} {task_name:8s} threads {n}  {case['ms_per_row']:7.1f} ms/row", flush=True)
    info = build_info.read_text() if build_info and build_info.is_file() else None
    return {
        "label": label,
        "llama_cpp": str(Path(llama_cpp.__file__).parent),
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "cpu_variants": variants,
        "build_info": dict(line.split("=", 1) for line in info.splitlines() if "=" in line) if info else None,
        "model": model,
        "cases": cases,
    }


def combine(paths: list[Path]) -> dict:
    builds = [json.loads(p.read_text()) for p in paths]
    first = builds[0]
    for b in builds:  # answers agree with the first build's, per case
        for case, ref in zip(b["cases"], first["cases"], strict=True):
            case["agreement_with_" + first["label"]] = round(
                float(np.mean(np.equal(case["answers"], ref["answers"]))), 4
            )
    from cascade.results import commit, machine, now_iso

    return {"benchmark": "llama-build", "when": now_iso(), "commit": commit(), "machine": machine(), "builds": builds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cascade.bench.llama_build", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="measure the llama_cpp this interpreter imports")
    m.add_argument("--label", required=True)
    m.add_argument("--rows", type=int, default=100)
    m.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    m.add_argument("--build-info", type=Path, default=None, help="the wheelhouse folder's BUILD_INFO")
    c = sub.add_parser("combine", help="join measured builds into one results file")
    c.add_argument("files", type=Path, nargs="+")
    c.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.command == "measure":
        WORK.mkdir(parents=True, exist_ok=True)
        out = WORK / f"llama-build-{args.label}.json"
        out.write_text(json.dumps(measure(args.label, args.rows, args.threads, args.build_info), indent=1))
        print(f"wrote {out}")
        return 0
    from cascade.bench import gate as bench

    result = combine(args.files)
    print(f"saved {bench.save(result, 'llama-build', args.results_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
