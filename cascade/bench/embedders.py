"""Which embedder? Tier-0 quality, coverage and speed of each packaged embedder, side by side.

``python -m cascade.bench.embedders [--embedders minilm-l6 mpnet-base] [--tasks sst2 ag_news] [--train 2000]``

For each embedder (exported to ONNX as ``cascade build`` does, fp32 and dynamic int8) and task, on the shipped
splits with **gold** labels (a property of the embedding, not of a teacher):

- logistic regression (tier 0's settings) is trained on ``--train`` training rows;
- its threshold is calibrated on ``--calib`` other training rows (the task's target and delta, Clopper-Pearson,
  as ``cascade calibrate``) and measured on the evaluation split: **coverage** (share of rows it answers) and
  accuracy on those rows, plus plain accuracy;
- ONNX Runtime's speed on 2 threads (sentences/s over ``--speed-rows`` evaluation rows, batches of 64).

From these, the CPU seconds per row of a two-tier cascade (the embedding, plus the LLM for the rows tier 0 does
not answer, at ``--llm-ms``): the default embedder is the one with the lowest such cost, i.e. the most rows
answered per CPU second. JSON goes to ``bench/results/embedders-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from cascade import embedders
from cascade.calibrate import DEFAULT_COST_MS, choose_threshold
from cascade.contract import TIER_LLM_LARGE
from cascade.paths import RESULTS_DIR
from cascade.results import save_result
from cascade.tasks import load_split, load_task

EVAL_SPLIT = {"sst2": "validation", "ag_news": "test"}


def export(name: str, work: Path, int8: bool) -> Path:
    """The embedder's ONNX folder (exported once into ``work``), with ``model.onnx`` dynamically quantised if
    ``int8``."""
    from cascade_export.build.embedder import export_embedder

    folder = work / name
    if not (folder / "model.onnx").is_file():
        export_embedder(folder, name)
    if not int8:
        return folder
    quant = work / f"{name}-int8"
    if not (quant / "model.onnx").is_file():
        import shutil

        from onnxruntime.quantization import QuantType, quantize_dynamic

        shutil.copytree(folder, quant, dirs_exist_ok=True)
        (quant / "model.onnx").unlink()
        quantize_dynamic(str(folder / "model.onnx"), str(quant / "model.onnx"), weight_type=QuantType.QInt8)
    return quant


def embed_cached(folder: Path, texts: list[str], cache: Path) -> np.ndarray:
    from cascade.runtime.onnx_runner import OnnxRunner

    if cache.is_file():
        return np.load(cache)
    runner = OnnxRunner(folder, num_threads=2)
    out = np.concatenate([runner.run(texts[i : i + 256]) for i in range(0, len(texts), 256)])
    np.save(cache, out)
    return out


def speed(folder: Path, texts: list[str], batch: int = 64) -> float:
    from cascade.runtime.onnx_runner import OnnxRunner

    runner = OnnxRunner(folder, num_threads=2)
    runner.run(texts[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        runner.run(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - start)


def measure(name: str, int8: bool, task_name: str, args, work: Path) -> dict:
    from cascade_export.build.tabular import train_logreg

    task = load_task(task_name)
    folder = export(name, work, int8)
    tag = f"{folder.name}-{task_name}"
    texts, labels = load_split(task, "train", args.data_dir)
    order = np.random.default_rng(args.seed).permutation(len(texts))[: args.train + args.calib]
    pool = [texts[i] for i in order]
    y = np.asarray(labels)[order]
    ev_texts, ev_y = load_split(task, EVAL_SPLIT[task_name], args.data_dir)
    ev_texts, ev_y = ev_texts[: args.eval_rows], np.asarray(ev_y)[: args.eval_rows]
    x = embed_cached(folder, pool, work / f"{tag}-pool.npy")
    ex = embed_cached(folder, ev_texts, work / f"{tag}-eval.npy")
    model = train_logreg(x[: args.train], y[: args.train])
    cp = model.predict_proba(x[args.train :])
    cal = choose_threshold(cp.max(1), cp.argmax(1) == y[args.train :], task.target, task.delta)
    ep = model.predict_proba(ex)
    accepted = ep.max(1) >= cal.threshold if cal.enabled else np.zeros(len(ev_y), bool)
    correct = ep.argmax(1) == ev_y
    rate = speed(folder, ev_texts[: args.speed_rows])
    coverage = float(accepted.mean())
    cpu_ms = 2 * 1000 / rate + (1 - coverage) * args.llm_ms  # 2 cores busy while embedding
    row = {
        "embedder": name,
        "int8": int8,
        "task": task_name,
        "dim": embedders.get(name).dim,
        "accuracy": round(float(correct.mean()), 4),
        "target": task.target,
        "threshold": cal.threshold,
        "coverage": round(coverage, 4),
        "accuracy_on_accepted": round(float(correct[accepted].mean()), 4) if accepted.any() else None,
        "sentences_per_s": round(rate, 1),
        "cascade_cpu_ms_per_row": round(cpu_ms, 1),
        "rows_per_cpu_s": round(1000 / cpu_ms, 2),
        "model_mb": round((folder / "model.onnx").stat().st_size / 1e6, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cascade.bench.embedders", description=__doc__.split("\n")[0])
    parser.add_argument("--embedders", nargs="+", default=list(embedders.EMBEDDERS))
    parser.add_argument("--tasks", nargs="+", default=list(EVAL_SPLIT))
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--calib", type=int, default=1000)
    parser.add_argument("--eval-rows", type=int, default=2000)
    parser.add_argument("--speed-rows", type=int, default=512)
    parser.add_argument("--llm-ms", type=float, default=DEFAULT_COST_MS[TIER_LLM_LARGE], help="LLM CPU ms per row")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--work", default="/tmp/cascade-bench-embedders", help="exports and cached embeddings")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = [
        measure(name, int8, task, args, work)
        for name in args.embedders
        for int8 in ((False,) if args.no_int8 else (False, True))
        for task in args.tasks
    ]
    best = min(rows, key=lambda r: r["cascade_cpu_ms_per_row"])
    result = {
        "created": datetime.now().isoformat(timespec="seconds"),
        "command": "python -m cascade.bench.embedders " + " ".join(argv if argv is not None else sys.argv[1:]),
        "labels": "gold",
        "llm_cpu_ms_per_row": args.llm_ms,
        "rows": rows,
        "lowest_cascade_cost": {k: best[k] for k in ("embedder", "int8", "task")},
    }
    print(f"saved {save_result('embedders', result, RESULTS_DIR)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
