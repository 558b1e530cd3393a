"""The demo job: build a task if needed, start Triton, classify labelled rows, print a summary."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from cascade import contract
from cascade.errors import ConfigError
from cascade.llm.cost_report import cost_lines, cost_report, scrape
from cascade.repository.configgen import parse_config
from cascade.tasks import TaskSpec, load_split

console = Console()


def task_is_built(task: TaskSpec, repo: Path) -> bool:
    """Every model of the task is in ``repo``, built from this very task definition."""
    names = [contract.EMBEDDER_MODEL, contract.gate_model_name(task.name), *task.model_names().values()]
    if not all((Path(repo) / name / "config.pbtxt").is_file() for name in names if name):
        return False
    gate = Path(repo) / contract.gate_model_name(task.name)
    try:
        if json.loads((gate / "build_report.json").read_text()).get("task_digest") != task.digest():
            return False
        outputs = {o.name for o in parse_config((gate / "config.pbtxt").read_text()).output}
    except (OSError, ValueError, ConfigError):
        return False
    # A gate written before its contract grew (e.g. the DEGRADED output) is rebuilt too.
    return outputs == {t.name for t in contract.GATE_SIGNATURE[1]}


#: Requests the demo keeps in flight: one per gate instance (``configgen.gate_spec``), so both gate instances
#: and both ``llm_large`` instances work (the slow tier is what the demo waits for).
IN_FLIGHT = 2


def classify_rows(client, task: TaskSpec, texts: list[str], batch_size: int) -> tuple[list, list[float]]:
    """Predictions in row order and each batch's latency; :data:`IN_FLIGHT` batches at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def one(start: int):
        t = time.perf_counter()
        predictions = client.classify(task.name, texts[start : start + batch_size])
        return predictions, (time.perf_counter() - t) * 1000

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        results = list(pool.map(one, range(0, len(texts), batch_size)))
    return [p for predictions, _ in results for p in predictions], [ms for _, ms in results]


def summarize(task: TaskSpec, predictions, gold: list[int], latencies: list[float], wall_s: float) -> dict:
    tiers = Counter(p.tier for p in predictions)
    index = {label: i for i, label in enumerate(task.labels)}
    correct = np.array([index[p.label] == g for p, g in zip(predictions, gold, strict=True)])
    per_tier = {}
    for tier in sorted(tiers):
        mask = np.array([p.tier == tier for p in predictions])
        per_tier[contract.TIER_NAMES[tier]] = {
            "rows": int(mask.sum()),
            "share": float(mask.mean()),
            "accuracy": float(correct[mask].mean()),
        }
    llm_rows = sum(n for tier, n in tiers.items() if tier in contract.LLM_TIERS)
    return {
        "task": task.name,
        "rows": len(predictions),
        "accuracy": float(correct.mean()),
        "llm_share": llm_rows / len(predictions),
        "per_tier": per_tier,
        "wall_s": wall_s,
        "rows_per_s": len(predictions) / wall_s,
        "batch_latency_ms_p50": float(np.percentile(latencies, 50)),
        "batch_latency_ms_p99": float(np.percentile(latencies, 99)),
        "degraded_rows": sum(p.degraded for p in predictions),
    }


def print_summary(summary: dict, batch_size: int) -> None:
    console.print(
        f"[bold]{summary['task']}[/]: {summary['rows']} rows, accuracy {summary['accuracy']:.3f} against gold"
    )
    table = Table()
    for column in ("tier", "rows", "share", "accuracy"):
        table.add_column(column, justify="right")
    for name, row in summary["per_tier"].items():
        table.add_row(name, str(row["rows"]), f"{row['share']:.1%}", f"{row['accuracy']:.3f}")
    console.print(table)
    console.print(f"LLM share (rows answered by tiers 3-4): {summary['llm_share']:.1%}")
    if summary["degraded_rows"]:
        console.print(
            f"[yellow]{summary['degraded_rows']} row(s) answered best-effort[/] (a tier was too slow or failed; "
            "the answer of the most confident tier that scored them)"
        )
    console.print(
        f"{summary['rows_per_s']:.0f} rows/s over gRPC in batches of {batch_size}, {IN_FLIGHT} in flight; "
        f"batch latency p50 {summary['batch_latency_ms_p50']:.1f} ms, p99 {summary['batch_latency_ms_p99']:.1f} ms"
    )


def print_calibration(report: dict) -> None:
    """The calibration report of a build: per tier, on the held-out reference labels."""
    table = Table(
        title=f"calibration on {report['calib_rows']} held-out rows ({report['reference'].split(' from ')[0]})"
    )
    for column in ("tier", "reaches", "threshold", "accepts", "agreement", "lower bound", "enabled"):
        table.add_column(column, justify="right")
    for c in report["calibration"]:
        threshold = "-" if c["threshold"] is None else f"{c['threshold']:.3f}"
        fallback = c["enabled"] and c["threshold"] is None  # answers every row that reaches it: no bound is tested
        table.add_row(
            contract.TIER_NAMES[c["tier"]],
            str(c["rows"]),
            threshold,
            f"{c['coverage']:.1%}",
            f"{c['agreement']:.3f}",
            "-" if fallback else f"{c['lower_bound']:.3f}",
            "yes" if c["enabled"] else "no",
        )
    console.print(table)
    console.print(f"target {report['target']} with confidence {1 - report['delta']:.0%} (Clopper-Pearson)")


#: What the demo's results keep of ``cascade label``'s summary (not the prompt: it is in the task's gate).
LABELLING_KEYS = (
    "teacher", "sample", "labelled_rows", "cached_rows", "teacher_s", "teacher_rows_per_s", "wall_s", "label_counts"
)  # fmt: skip


def build_with_teacher(task: TaskSpec, repo: Path, client, work_root: Path, sample: int, data_dir) -> dict:
    """label (the large tier, through ``client``'s server) -> train -> calibrate -> export -> load."""
    from cascade_export.build.stage import BuildOptions
    from cascade_export.distill.commands import run_label, teach_and_load

    labelled = run_label(task, work_root, sample=sample, url=client.url, data_dir=data_dir)
    console.print(
        f"teacher {labelled['teacher']}: {labelled['labelled_rows']} rows labelled in {labelled['teacher_s']:.1f} s "
        f"({labelled['cached_rows']} from the cache); labels {labelled['label_counts']}"
    )
    report, _, seconds = teach_and_load(task, repo, work_root, client, BuildOptions(data_dir=data_dir))
    report["timings"]["train_calibrate_export_load_s"] = seconds
    report["labelling"] = {k: v for k, v in labelled.items() if k in LABELLING_KEYS}
    console.print(
        f"train + calibrate + export + load: {report['timings']['train_calibrate_export_load_s']:.1f} s "
        f"(the teacher's labelling not included)"
    )
    return report


def run_demo(
    task: TaskSpec,
    repo: Path,
    rebuild: bool = False,
    rows: int | None = None,
    batch_size: int = 32,
    data_dir: str | None = None,
    build_options=None,
    teacher: str = "llm_large",
    sample: int = 1000,
    work_root: Path | None = None,
) -> dict:
    """Build ``task`` if needed (``teacher="llm_large"``: the large tier labels ``sample`` training rows
    through the demo's own server; ``"gold"``: the dataset's labels), then classify its validation rows.
    The summary (:func:`summarize`) also holds the seconds of each stage (``stages``), the build's figures
    (``build``: this run's, or those of the build that made the served task when ``built`` is False) and the
    teacher's (``labelling``, when it labelled in this run): :func:`demo_result` makes it a result file."""
    from cascade import embedders
    from cascade.paths import RUNS_DIR
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports
    from cascade_client import CascadeClient
    from cascade_export.build.commands import build_figures, build_task
    from cascade_export.build.llm_tiers import ensure_llms
    from cascade_export.build.repo_embedder import ensure_embedder
    from cascade_export.build.stage import BuildOptions

    repo = Path(repo)
    begin = time.perf_counter()
    stages: dict[str, float] = {}
    build = rebuild or not task_is_built(task, repo)
    built = build
    report = None
    if build and teacher == "gold":
        console.print(f"[bold]Building task {task.name}[/] into {repo} from gold labels")
        report = build_task(task, repo, build_options or BuildOptions(data_dir=data_dir))
        stages["build_s"] = time.perf_counter() - begin
        build = False
    elif build:
        console.print(f"[bold]Building task {task.name}[/] into {repo}: the large tier teaches")
        ensure_embedder(repo)
        ensure_llms(repo)
        stages["embedder_and_llms_s"] = time.perf_counter() - begin
    texts, gold = load_split(task, "validation", data_dir, limit=rows)
    http, grpc, metrics = free_ports(3)
    opts = ServerOptions(
        repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics, model_control_mode="explicit"
    )
    console.print(f"[bold]Starting tritonserver[/] on 127.0.0.1 (gRPC {grpc})")
    t = time.perf_counter()
    with TritonServer(opts) as server, CascadeClient(server.grpc_url, timeout_s=600) as client:
        stages["server_start_s"] = time.perf_counter() - t
        at_start = scrape(server.metrics_url)
        if build:
            report = build_with_teacher(task, repo, client, work_root or RUNS_DIR, sample, data_dir)
            stages["labelling_s"] = report["labelling"]["wall_s"]
            stages["train_calibrate_export_load_s"] = report["timings"]["train_calibrate_export_load_s"]
        if report is not None:
            print_calibration(report)
        t = time.perf_counter()
        client.classify(task.name, texts[:4])  # warm-up
        stages["warmup_s"] = time.perf_counter() - t
        before = scrape(server.metrics_url)
        start = time.perf_counter()
        predictions, latencies = classify_rows(client, task, texts, batch_size)
        wall = time.perf_counter() - start
        stages["classify_s"] = wall
        cost = cost_report(before, scrape(server.metrics_url), len(texts))
        teaching = cost_report(at_start, before, sample) if build else None
    stages["total_s"] = time.perf_counter() - begin
    summary = summarize(task, predictions, gold, latencies, wall)
    print_summary(summary, batch_size)
    for line in cost_lines(cost):
        console.print(line)
    embedder = embedders.of_repository(repo)
    labelling = report.get("labelling") if report is not None else None
    figures = build_figures(report, repo) if report is not None else None
    if report is None:  # built before: the figures of the build that made the served task, where readable
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            old = json.loads((repo / contract.gate_model_name(task.name) / "build_report.json").read_text())
            figures = build_figures(old, repo)
    return summary | {
        "embedder": embedder.name if embedder is not None else None,
        "teacher": labelling["teacher"] if labelling else teacher if built else None,
        "built": built,  # False: the task was already built (``build`` is then that build's, its reference too)
        "repo": str(repo),
        "batch_size": batch_size,
        "in_flight": IN_FLIGHT,
        "stages": stages,
        "teacher_rows_per_s": labelling["teacher_rows_per_s"] if labelling else None,
        "labelling": labelling,
        "build": figures,
        "cost": cost,  # the classified rows: the LLM tiers' tokens and cost, and all of them on the large tier
        "teaching_cost": teaching["run"] if teaching and "run" in teaching else None,  # labelling, then calibrating
    }


def demo_result(summary: dict, command: str | None = None) -> dict:
    """``cascade demo``'s ``bench/results/demo-<time>.json``: what it printed, from :func:`run_demo`'s summary
    (accuracy against gold, per-tier shares, LLM share, best-effort rows, seconds per stage, the build's figures)."""
    from cascade.results import command_line, machine, now_iso

    head = {"benchmark": "demo", "when": now_iso(), "command": command or command_line()}
    setup = setup_record(summary["stages"]["total_s"])
    with_setup = setup["seconds"] + summary["stages"]["total_s"] if setup and setup["just_before"] else None
    return (
        head
        | summary
        | {
            "best_effort_rows": summary["degraded_rows"],
            "setup": setup,  # ``make setup``'s own record, where this install has one
            "with_setup_s": with_setup,  # setup + demo, when ``make setup demo`` ran them one after the other
            "machine": machine(),
        }
    )


#: A setup that finished at most this long before the demo started was the same ``make setup demo``.
SAME_RUN_S = 120


def setup_record(demo_s: float, prefix: str | None = None) -> dict | None:
    """What ``make setup`` wrote in ``<venv>/.setup.json`` (its seconds, when it finished, the commit), with
    ``just_before``: whether it finished within :data:`SAME_RUN_S` of this demo's start; None without a record."""
    from datetime import UTC, datetime, timedelta

    try:
        record = json.loads((Path(prefix or sys.prefix) / ".setup.json").read_text())
        finished = datetime.fromisoformat(record["finished"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    demo_start = datetime.now(UTC) - timedelta(seconds=demo_s)
    return record | {"just_before": timedelta(0) <= demo_start - finished <= timedelta(seconds=SAME_RUN_S)}
