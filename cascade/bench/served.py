"""``python -m cascade.bench.served`` (``make bench-served``): a task as a user gets it, judged on rows no choice saw.

1. The teacher (``llm_large``, through a real server) labels ``--budget`` rows of the training split, the first rows
   of one seeded permutation (``cascade label``'s sample). The committed cache ``bench/labels/<task>.jsonl.gz``
   answers the rows it holds, so a rerun labels nothing again; the file is rewritten with any new labels.
2. The build learns from them (tier 0's ``C`` cross-validated inside the sample; half the sample calibrates) at
   ``--target``, which the run states before it starts, and the server loads the task.
3. The report rows: the last ``--report-rows`` rows of the same permutation, which no sample of this size takes. No
   choice saw them: not the sample, C or the thresholds, and not the embedder or the prompts, chosen on the
   validation and test splits (docs/embedders.md, docs/llm.md). A row whose text is one of the prompts' few-shot
   examples or among the prompt search's training rows (AG News) is left out. The teacher labels them (cached
   alike) and ``cascade eval`` runs them through the server.
4. The result: the cascade's and the teacher's accuracy against gold on the same rows, the rows per tier, the LLM
   share, and whether the cascade is within one point of the teacher (``within_1pt``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cascade import contract
from cascade.errors import ConfigError, InvalidInput
from cascade.paths import BENCH_WORK_DIR, RESULTS_DIR
from cascade.results import command_line, now_iso, save_result
from cascade.tasks import load_split, load_task

LABELS_DIR = RESULTS_DIR.parent / "labels"
GOLD = "gold"


def cache_file(task: str) -> Path:
    """The committed teacher labels of ``task`` (gzipped JSON lines, :meth:`LabelStore.dump`)."""
    return LABELS_DIR / f"{task}.jsonl.gz"


def report_rows(task, n: int, budget: int, data_dir=None, seed: int = 0, exclude=frozenset()) -> tuple[list, dict]:
    """The report rows (position, text, gold label name) and how they were drawn; rows whose text is in
    ``exclude`` (the prompts' few-shot examples) are left out."""
    from cascade_export.distill.table_rows import held_out_rows

    texts, gold = load_split(task, "train", data_dir)
    if budget + n > len(texts):
        raise ConfigError(f"--budget {budget} + --report-rows {n} exceed the {len(texts)} training rows")
    positions = held_out_rows(len(texts), n, seed)
    searched = prompt_search_rows(task.name, data_dir)
    rows = [(int(i), texts[i], task.labels[gold[i]]) for i in positions if texts[i] not in exclude | searched]
    how = {"split": "train", "seed": seed, "last_of_permutation": n, "left_out": n - len(rows)}
    return rows, how


#: How many of ``cascade.bench.llm``'s prompt-search rows are kept out of the report rows (its default is 300).
SEARCH_ROWS = 1000


def prompt_search_rows(task: str, data_dir=None) -> set[str]:
    """The training rows the prompt search of ``cascade.bench.llm`` scores (``--split dev``) where they come from the
    training split (AG News; SST-2's come from its validation split)."""
    from cascade import paths
    from cascade.bench.llm import TASKS
    from cascade.bench.llm_data import eval_rows

    if task not in TASKS or TASKS[task].dev_split != "train":
        return set()
    return set(eval_rows(TASKS[task], paths.data_dir(data_dir), SEARCH_ROWS, "dev")[0])


def prompt_examples(teacher_prompt: dict | None, gate_dir: Path) -> set[str]:
    """The texts of the few-shot examples in the teacher's prompt and in the served gate's LLM prompts."""
    from cascade.repository.configgen import parse_config

    prompts = [teacher_prompt or {}]
    config = parse_config((gate_dir / "config.pbtxt").read_text())
    if contract.CFG_PROMPTS in config.parameters:
        prompts += json.loads(config.parameters[contract.CFG_PROMPTS].string_value).values()
    return {text for prompt in prompts for text, _ in prompt.get("few_shot", [])}


def eval_on_server(task: str, table: Path, url: str, out: Path) -> dict:
    """``cascade eval`` on ``table`` through the server at ``url`` (the user's command, in its own process)."""
    cmd = [sys.executable, "-m", "cascade.cli.main", "eval", task, "--table", str(table), "--label-column", GOLD,
           "--url", url, "--json", str(out)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise ConfigError(f"cascade eval failed ({run.returncode}): {run.stderr[-2000:]}")
    print(run.stdout, end="", flush=True)
    return json.loads(out.read_text())


def bench_served(task_name: str, budget: int, n_report: int, target: float, repo: Path, work: Path, data_dir=None):
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports
    from cascade_client import CascadeClient
    from cascade_export.build.commands import build_figures
    from cascade_export.build.llm_tiers import ensure_llms
    from cascade_export.build.repo_embedder import ensure_embedder
    from cascade_export.build.stage import BuildOptions
    from cascade_export.distill.commands import run_label, teach_and_load, work_dir_of
    from cascade_export.distill.label_store import LabelStore

    if not 0 < target <= 1:
        raise InvalidInput(f"--target {target} must be in (0, 1]")
    task = load_task(task_name)
    report_rows(task, n_report, budget, data_dir)  # too many rows fails here, before a server starts
    committed = cache_file(task.name)
    stores = [work_dir_of(task.name, work / part) / "labels.sqlite" for part in ("sample", "report")]
    for store in stores:
        if committed.is_file():
            with LabelStore(store) as s:
                print(f"label cache: {s.load(committed, task.name)} rows from {committed}")
    repo, stages, begin = Path(repo), {}, time.perf_counter()
    ensure_embedder(repo)
    ensure_llms(repo)
    http, grpc, metrics = free_ports(3)
    opts = ServerOptions(
        repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics, model_control_mode="explicit"
    )
    with TritonServer(opts) as server, CascadeClient(server.grpc_url, timeout_s=600) as client:
        t = time.perf_counter()
        sample = run_label(task, work / "sample", budget=budget, url=server.grpc_url, data_dir=data_dir)
        stages["label_sample_s"] = time.perf_counter() - t
        options = BuildOptions(data_dir=data_dir, target=target)
        build, _, stages["build_and_load_s"] = teach_and_load(task, repo, work / "sample", client, options)
        examples = prompt_examples(sample.get("teacher_prompt"), repo / contract.gate_model_name(task.name))
        rows, drawn = report_rows(task, n_report, budget, data_dir, exclude=examples)
        table = work / f"{task.name}-report.parquet"
        ids, texts, gold = zip(*rows, strict=True)
        pq.write_table(pa.table({"id": [str(i) for i in ids], "text": list(texts), GOLD: list(gold)}), table)
        t = time.perf_counter()
        held = run_label(task, work / "report", table, id_column="id", budget=len(rows), url=server.grpc_url)
        stages["label_report_s"] = time.perf_counter() - t
        cascade = eval_on_server(task.name, table, server.grpc_url, work / f"{task.name}-eval.json")
    gold_of = dict(zip(ids, gold, strict=True))
    teacher = teacher_accuracy(work_dir_of(task.name, work / "report") / "labelled.csv", gold_of, task)
    with LabelStore(stores[1]) as b:  # both runs' labels, one committed file
        b.dump(work / "report-labels.jsonl.gz", task.name)
    with LabelStore(stores[0]) as a:
        a.load(work / "report-labels.jsonl.gz", task.name)
        kept = a.dump(committed, task.name)
    stages["total_s"] = time.perf_counter() - begin
    keys = ("rows", "accuracy", "llm_share", "tiers", "tier_accuracy", "errors", "degraded", "rows_per_s")
    return {
        "benchmark": "served",
        "when": now_iso(),
        "command": command_line(prog="python -m cascade.bench.served"),
        "task": task.name,
        "target": target,  # stated before the run
        "budget": budget,
        "report": drawn | {"rows": len(rows)},
        "teacher": {"name": sample["teacher"], "accuracy": teacher},
        "cascade": {k: cascade[k] for k in keys},
        "within_1pt": cascade["accuracy"] >= teacher - 0.01,
        "build": build_figures(build, repo),
        "labelling": {"sample": _labelling(sample), "report": _labelling(held), "cache": str(committed), "kept": kept},
        "stages": stages,
    }


def teacher_accuracy(labelled: Path, gold_of: dict, task) -> float:
    import pandas as pd

    frame = pd.read_csv(labelled, dtype={"id": str})
    hits = [task.labels[int(y)] == gold_of[int(i)] for i, y in zip(frame["id"], frame["label"], strict=True)]
    return sum(hits) / len(hits)


def _labelling(summary: dict) -> dict:
    keys = ("labelled_rows", "cached_rows", "teacher_s", "teacher_rows_per_s")
    return {k: summary.get(k) for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cascade.bench.served", description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--target", type=float, required=True, help="the agreement to guarantee, stated up front")
    parser.add_argument("--budget", type=int, default=1000, help="teacher labels of training rows (%(default)s)")
    parser.add_argument("--report-rows", type=int, default=500, help="held-out rows to report on (%(default)s)")
    parser.add_argument("--repo", type=Path, default=BENCH_WORK_DIR / "served" / "repo")
    parser.add_argument("--work-dir", type=Path, default=BENCH_WORK_DIR / "served")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    result = bench_served(
        args.task, args.budget, args.report_rows, args.target, args.repo, args.work_dir, args.data_dir
    )
    c, t = result["cascade"], result["teacher"]
    print(
        f"{args.task} at target {args.target}, {result['report']['rows']} report rows: cascade {c['accuracy']:.3f}, "
        f"teacher {t['accuracy']:.3f}, LLM share {c['llm_share']:.1%}, within 1 point: {result['within_1pt']}"
    )
    print(f"saved {save_result(f'served-{args.task}', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
