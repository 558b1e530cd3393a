"""The ``cascade`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cascade import contract
from cascade.client.table import DEFAULT_BATCH_ROWS, DEFAULT_CHUNK_ROWS, DEFAULT_IN_FLIGHT, EMBEDDING_COLUMN
from cascade.errors import CascadeError, InvalidInput
from cascade.export.distill import CREATE_TIERS, DEFAULT_BUDGET, STRATEGIES
from cascade.paths import DEFAULT_DATA_DIR, DEFAULT_REPO, RUNS_DIR
from cascade.soak import DEFAULT_WARMUP_S


def _add_repo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="model repository (default: %(default)s)")


def _add_task(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="sst2", help="task name (tasks/NAME.toml) or a task TOML file")
    parser.add_argument(
        "--data-dir", default=None, help=f"datasets folder (default: $CASCADE_DATA_DIR or {DEFAULT_DATA_DIR})"
    )


def _add_work(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--work-dir", type=Path, default=RUNS_DIR, help="distillation files, per task (default: %(default)s)"
    )


def _add_results(parser: argparse.ArgumentParser) -> None:
    """``cascade build`` and ``cascade demo``: where their figures go (cascade.results)."""
    parser.add_argument("--results-dir", type=Path, default=None, help="where the JSON goes (default: bench/results)")
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON")


def _command(args) -> str:
    from cascade.results import command_line

    return command_line(getattr(args, "argv", None))


def _save_result(name: str, payload: dict, args) -> None:
    """Print where ``payload`` went; a results folder that cannot be written (a read-only checkout) only warns."""
    from cascade.results import save_result

    if args.no_save:
        return
    try:
        print(f"saved {save_result(name, payload, args.results_dir)}")
    except OSError as exc:
        print(f"cascade {args.command}: warning: results not saved: {exc}", file=sys.stderr)


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    """``cascade label`` and ``cascade task create``: how many rows the teacher labels, and which."""
    parser.add_argument(
        "--budget", "--sample", dest="budget", type=int, default=DEFAULT_BUDGET,
        help="rows the teacher labels (--sample: the former name; default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--strategy", choices=STRATEGIES, default="uniform",
        help="uniform sample, or active: a uniform seed (half, >= 200 rows), then the rows tier 0 is least sure of",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start tritonserver on a model repository")
    _add_repo(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    p.add_argument("--http-port", type=int, default=contract.DEFAULT_HTTP_PORT)
    p.add_argument("--grpc-port", type=int, default=contract.DEFAULT_GRPC_PORT)
    p.add_argument("--metrics-port", type=int, default=contract.DEFAULT_METRICS_PORT)
    p.add_argument("--model-control-mode", choices=("none", "explicit"), default="none")
    p.add_argument("--tls-cert", type=Path, default=None, help="gRPC over TLS: the server certificate (PEM)")
    p.add_argument("--tls-key", type=Path, default=None, help="gRPC over TLS: its private key (PEM)")
    p.add_argument("--log-verbose", type=int, default=0)
    p.add_argument(
        "--llm-threads",
        type=int,
        default=None,
        help=f"threads of each llama.cpp model (${contract.LLM_THREADS_ENV}; default: half the server's cores)",
    )

    p = sub.add_parser("build", help="train, calibrate and export a task into the model repository")
    _add_repo(p)
    _add_task(p)
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--calib-rows", type=int, default=1000)
    p.add_argument("--encoder-epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", type=Path, default=None, help="teacher labels (`cascade label`'s labelled.csv)")
    p.add_argument("--calib-fraction", type=float, default=0.5, help="with --labels: rows held out to calibrate")
    _add_embedder(p)
    _add_results(p)

    p = sub.add_parser("label", help="have the teacher label a sample of a table (cached, resumable)")
    _add_task(p)
    p.add_argument("--table", type=Path, default=None, help="CSV or Parquet (default: the task's train split)")
    p.add_argument("--column", default=None, help="text column (default: the task's, else 'text')")
    p.add_argument("--id-column", default=None, help="row id column (default: row positions)")
    _add_sampling(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--teacher", default="llm_large", help="llm_large (through the server) or column:NAME (labels you hold)"
    )
    _add_repo(p)  # --strategy active embeds rows with this repository's embedder
    p.add_argument("--url", default=f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}", help="gRPC endpoint of the server")
    _add_work(p)

    p = sub.add_parser("train", help="train tiers 0-2 on teacher (or gold) labels into the task's work folder")
    _add_repo(p)
    _add_task(p)
    _add_embedder(p)
    p.add_argument("--labels", type=Path, default=None, help="teacher labels (`cascade label`'s labelled.csv)")
    p.add_argument("--calib-fraction", type=float, default=0.5, help="with --labels: rows held out to calibrate")
    p.add_argument("--train-rows", type=int, default=2000, help="without --labels: gold rows to train on")
    p.add_argument("--calib-rows", type=int, default=1000, help="without --labels: gold rows to calibrate on")
    p.add_argument("--encoder-epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    _add_work(p)

    p = sub.add_parser("calibrate", help="choose thresholds with a Clopper-Pearson guarantee; plot them")
    _add_repo(p)
    _add_task(p)
    p.add_argument("--target", type=float, default=None, help="agreement to guarantee (default: the task's)")
    p.add_argument("--delta", type=float, default=None, help="1 - confidence of the guarantee (default: the task's)")
    p.add_argument("--keep-all-tiers", action="store_true", help="keep tiers that miss the target (debugging)")
    p.add_argument(
        "--budget-ms", type=float, default=None, help="budget mode: the highest target whose expected ms/row fits"
    )
    _add_work(p)

    p = sub.add_parser("export", help="write the trained, calibrated task into the model repository atomically")
    _add_repo(p)
    _add_task(p)
    _add_work(p)
    p.add_argument(
        "--profile", choices=("cpu", "gpu"), default="cpu",
        help="gpu: also write the GPU profile (onnxruntime+TensorRT, FIL, GPU gate) beside --repo (default: cpu)",
    )  # fmt: skip
    p.add_argument("--gpu-repo", type=Path, default=None, help="where the GPU profile goes (default: REPO/../gpu)")
    p.add_argument("--trtllm-engine", default=None, help="GPU profile: the large tier's TensorRT-LLM engine folder")
    p.add_argument("--trtllm-tokenizer", default=None, help="GPU profile: its Hugging Face tokenizer folder")

    p = sub.add_parser("task", help="tasks in a running server")
    tsub = p.add_subparsers(dest="task_command", required=True)
    p = tsub.add_parser("create", help="label -> train -> calibrate -> export -> load, into a running server")
    p.add_argument("name", help="the new task's name (its gate model)")
    p.add_argument("--table", type=Path, required=True, help="CSV or Parquet with the texts")
    p.add_argument("--prompt", required=True, help="the question; '{text}' marks where a row goes")
    p.add_argument("--labels", required=True, help="comma-separated label names (also the LLM's answers)")
    p.add_argument("--column", default="text", help="text column (default: %(default)s)")
    p.add_argument("--id-column", default=None)
    _add_sampling(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiers", default=",".join(CREATE_TIERS), help="comma-separated (default: %(default)s)")
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--delta", type=float, default=0.05)
    p.add_argument("--encoder-epochs", type=int, default=2)
    p.add_argument("--url", default=f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}", help="gRPC endpoint of the server")
    _add_repo(p)
    _add_work(p)

    p = sub.add_parser("classify", help="classify texts through a running server")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--file", type=Path, help="a CSV with a text column")
    p.add_argument("--column", default="text", help="text column of --file (default: %(default)s)")
    p.add_argument("--task", default="sst2")
    p.add_argument("--url", default=f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}", help="gRPC endpoint")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-tier", default=None, help="answer at this tier or cheaper")
    p.add_argument("--min-tier", default=None, help="skip tiers cheaper than this")

    p = sub.add_parser("filter", help="a whole table through a task (AI.IF): label, confidence, tier per row")
    p.add_argument("table", type=Path, help="CSV or Parquet")
    p.add_argument("--task", required=True, help="the task (gate model) to run")
    p.add_argument("--out", type=Path, required=True, help="CSV or Parquet to write")
    p.add_argument("--where", default=None, help="keep only rows with this label (WHERE AI.IF(...))")
    p.add_argument("--column", default="text", help="text column (default: %(default)s)")
    p.add_argument(
        "--embedding-column",
        default=EMBEDDING_COLUMN,
        help="precomputed embeddings, sent as EMBEDDING when the table has this column (default: %(default)s)",
    )
    p.add_argument("--keep-embedding", action="store_true", help="copy the embedding column to the output")
    p.add_argument("--prefix", default="", help="before the result columns' names (label -> PREFIXlabel)")
    p.add_argument("--max-tier", default=None, help="answer at this tier or cheaper (e.g. xgboost: no LLM calls)")
    p.add_argument("--min-tier", default=None, help="skip tiers cheaper than this")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_ROWS, help="rows per request (default: %(default)s)")
    p.add_argument("--in-flight", type=int, default=DEFAULT_IN_FLIGHT, help="requests in flight (default: %(default)s)")
    p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="rows per committed chunk")
    p.add_argument("--restart", action="store_true", help="discard an unfinished job's chunks and start over")
    p.add_argument("--llm-probe-rows", type=int, default=8, help="rows to time llm_large on for the cost estimate")
    p.add_argument(
        "--on-degraded",
        choices=("keep", "retry"),
        default="keep",
        help="rows answered best-effort (a slow or failed tier): keep that answer, or send them again "
        "--degraded-retries times and keep the last answer (default: %(default)s)",
    )
    p.add_argument("--degraded-retries", type=int, default=2, help="with --on-degraded retry (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="also write the summary as JSON here")
    p.add_argument("--url", default=f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}", help="gRPC endpoint of the server")

    p = sub.add_parser("eval", help="a labelled table through a served task: accuracy, per tier, LLM share, rows/s")
    p.add_argument("task", help="the task (gate model) to run")
    p.add_argument("--table", type=Path, required=True, help="CSV or Parquet with a text and a label column")
    p.add_argument("--label-column", required=True, help="label names or label indices of the task")
    p.add_argument("--column", default="text", help="text column (default: %(default)s)")
    p.add_argument("--max-tier", default=None, help="answer at this tier or cheaper")
    p.add_argument("--min-tier", default=None, help="skip tiers cheaper than this")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    p.add_argument("--url", default=f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}", help="gRPC endpoint of the server")

    p = sub.add_parser("embed", help="add the server's embedding of each row to a table (resumable)")
    p.add_argument("table", type=Path, help="CSV or Parquet")
    p.add_argument("--out", type=Path, required=True, help="Parquet (or CSV) to write")
    p.add_argument("--column", default="text", help="text column (default: %(default)s)")
    p.add_argument("--embedding-column", default=EMBEDDING_COLUMN, help="the column to add (default: %(default)s)")
    p.add_argument("--float16", action="store_true", help="store float16 (half the size; see README for accuracy)")
    p.add_argument("--restart", action="store_true", help="discard an unfinished job's chunks and start over")
    p.add_argument("--url", default=f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}", help="gRPC endpoint of the server")

    p = sub.add_parser("make-table", help="a large synthetic table from an embedded one (throughput at scale)")
    p.add_argument("--from", dest="source", type=Path, required=True, help="Parquet written by `cascade embed`")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="Parquet to write")
    p.add_argument("--embedding-column", default=EMBEDDING_COLUMN)
    p.add_argument("--noise", type=float, default=0.01, help="perturbation of repeated embeddings (relative norm)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("loadtest", help="Locust scenarios against latency budgets (starts a server without --url)")
    p.add_argument("scenarios", nargs="+", help="scenario names, or all (see cascade/loadtest.py)")
    _add_repo(p)
    _add_task(p)
    p.add_argument("--url", default=None, help="a running server's gRPC endpoint (default: start one on --repo)")
    p.add_argument("--duration", type=int, default=30, help="seconds per scenario (step: its own steps)")
    p.add_argument("--users", type=int, default=None, help="override the scenario's user count")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply the latency budgets (e.g. 10 in CI)")
    p.add_argument("--find-max", action="store_true", help="climb each scenario's steps: highest rps within budget")
    p.add_argument("--results-dir", type=Path, default=None, help="where the JSON goes (default: bench/results)")

    p = sub.add_parser("soak", help="mixed traffic for a while: server memory, stubs and /dev/shm must stay flat")
    _add_repo(p)
    _add_task(p)
    p.add_argument("--duration", type=int, default=600, help="seconds of traffic (default: %(default)s)")
    p.add_argument(
        "--warmup", type=int, default=DEFAULT_WARMUP_S, help="seconds before memory is the baseline (%(default)s)"
    )
    p.add_argument("--growth", type=float, default=0.10, help="allowed memory growth after the warm-up (ratio)")
    p.add_argument("--results-dir", type=Path, default=None, help="where the JSON goes (default: bench/results)")

    p = sub.add_parser("demo", help="build the demo task if needed, serve it, classify labelled rows")
    _add_repo(p)
    _add_task(p)
    p.add_argument("--rows", type=int, default=None, help="validation rows to classify (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rebuild", action="store_true")
    p.add_argument(
        "--teacher", choices=("llm_large", "gold"), default="llm_large", help="who labels the rows the tiers learn from"
    )
    p.add_argument("--sample", type=int, default=1000, help="rows the teacher labels (default: %(default)s)")
    _add_work(p)
    _add_results(p)

    p = sub.add_parser("bench", help="benchmarks; results go to bench/results/")
    p.add_argument("which", choices=("gate", "table", "threads", "isolation"))
    _add_repo(p)
    _add_task(p)
    p.add_argument("--iterations", type=int, default=300, help="gate: requests per case")
    p.add_argument(
        "--rows",
        type=int,
        default=None,
        help="table: rows of the synthetic table (1,000,000); threads: rows per case (40)",
    )
    p.add_argument("--text-rows", type=int, default=10_000, help="table: rows classified from text")
    p.add_argument("--llm-rows", type=int, default=300, help="table: rows sent to the large tier")
    p.add_argument("--duration", type=float, default=20.0, help="isolation: seconds per phase")
    p.add_argument("--llm-clients", type=int, default=3, help="isolation: clients saturating llm_large")
    return parser


def _tier_arg(value: str | None):
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def cmd_serve(args) -> int:
    from cascade.launcher import ServerOptions, serve

    return serve(
        ServerOptions(
            repository=args.repo,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            model_control_mode=args.model_control_mode,
            log_verbose=args.log_verbose,
            admin_key=os.environ.get(contract.ADMIN_KEY_ENV) or None,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            llm_threads=args.llm_threads,
        )
    )


def _add_embedder(p) -> None:
    from cascade import embedders

    p.add_argument(
        "--hard-labels",
        dest="soft_labels",
        action="store_false",
        help="with --labels: learn from the teacher's argmax only, not its probabilities (prob_* columns)",
    )

    p.add_argument(
        "--embedder",
        choices=list(embedders.EMBEDDERS),
        default=None,
        help=f"a new repository's embedder, shared by all its tasks (default: the repository's, else "
        f"{embedders.DEFAULT_EMBEDDER}; docs/embedders.md)",
    )


def _build_options(args):
    """``cascade build`` and ``cascade train`` take the same training options."""
    from cascade.export.build import BuildOptions

    return BuildOptions(
        train_rows=args.train_rows,
        calib_rows=args.calib_rows,
        encoder_epochs=args.encoder_epochs,
        seed=args.seed,
        data_dir=args.data_dir,
        labels_file=str(args.labels) if args.labels else None,
        calib_fraction=args.calib_fraction,
        embedder=args.embedder,
        soft_labels=args.soft_labels,
    )


def cmd_build(args) -> int:
    from cascade.export.build import build_result, build_task
    from cascade.tasks import load_task

    options = _build_options(args)
    task = load_task(args.task)
    report = build_task(task, args.repo, options)
    _save_result(f"build-{task.name}", build_result(task, args.repo, report, _command(args)), args)
    return 0


def cmd_label(args) -> int:
    from cascade.export.distill import run_label
    from cascade.tasks import load_task

    summary = run_label(
        load_task(args.task),
        args.work_dir,
        args.table,
        text_column=args.column,
        id_column=args.id_column,
        budget=args.budget,
        seed=args.seed,
        teacher=args.teacher,
        url=args.url,
        data_dir=args.data_dir,
        strategy=args.strategy,
        repo=args.repo,
    )
    rate = summary["teacher_rows_per_s"]
    print(
        f"{summary['sample']} rows labelled by {summary['teacher']}: {summary['labelled_rows']} new, "
        f"{summary['cached_rows']} from the cache; teacher {summary['teacher_s']:.1f} s"
        + (f" ({rate:.1f} rows/s)" if rate else "")
    )
    if summary["strategy"] == "active":
        print(f"sample: {summary['uniform_rows']} uniform (calibrate), {summary['active_rows']} active (train only)")
    print(f"labels: {summary['label_counts']} -> {args.work_dir / summary['task'] / 'labelled.csv'}")
    return 0


def _stage(args) -> Path:
    from cascade.tasks import load_task

    return args.work_dir / load_task(args.task).name / "stage"


def cmd_train(args) -> int:
    from cascade.export.build import train_task
    from cascade.tasks import load_task

    options = _build_options(args)
    state = train_task(load_task(args.task), args.repo, _stage(args), options)
    print(
        f"trained on {state['train_rows']} rows ({state['reference']}); "
        f"{state['calib_rows']} held out -> {_stage(args)}"
    )
    return 0


def cmd_calibrate(args) -> int:
    from cascade.export.build import calibrate_task
    from cascade.tasks import load_task

    calibrate_task(
        load_task(args.task),
        args.repo,
        _stage(args),
        args.target,
        args.delta,
        keep_all_tiers=args.keep_all_tiers,
        budget_ms=args.budget_ms,
    )
    print(f"wrote {_stage(args) / 'calibration.json'} and calibration.png; next: cascade export")
    return 0


def cmd_export(args) -> int:
    from cascade.export.build import export_task
    from cascade.tasks import load_task

    task = load_task(args.task)
    export_task(task, args.repo, _stage(args))
    if args.profile == "gpu":
        from cascade.gpu_profile import write_gpu_repository

        target = args.gpu_repo or Path(args.repo).parent / "gpu"
        names = write_gpu_repository(args.repo, target, [task.name], args.trtllm_engine, args.trtllm_tokenizer)
        print(f"GPU profile of {task.name} written to {target}: {', '.join(names)} (unverified on a GPU)")
    return 0


def cmd_task(args) -> int:
    from cascade.export.distill import create_task

    labels = [x for x in args.labels.split(",") if x.strip()]
    result = create_task(
        args.name,
        args.table,
        args.prompt,
        labels,
        repo=args.repo,
        work_root=args.work_dir,
        url=args.url,
        text_column=args.column,
        id_column=args.id_column,
        budget=args.budget,
        strategy=args.strategy,
        seed=args.seed,
        tiers=[x.strip() for x in args.tiers.split(",") if x.strip()],
        target=args.target,
        delta=args.delta,
        encoder_epochs=args.encoder_epochs,
    )
    enabled = json.loads(result["gate"][contract.CFG_TIERS])
    print(
        f"task {result['task']} is served: tiers {enabled}; teacher labelling "
        f"{result['teacher_labelling_s']:.1f} s, train + calibrate + export + load "
        f"{result['train_calibrate_export_load_s']:.1f} s (definition: {result['task_file']})"
    )
    return 0


def cmd_classify(args) -> int:
    from cascade.client import CascadeClient

    texts = list(args.texts)
    if args.file:
        import pandas as pd

        if not args.file.is_file():
            raise CascadeError(f"--file {args.file}: no such file")
        frame = pd.read_csv(args.file, keep_default_na=False)
        if args.column not in frame.columns:
            raise CascadeError(f"--file {args.file}: no column {args.column!r} (columns: {list(frame.columns)})")
        texts.extend(frame[args.column].astype(str))
    if not texts:
        raise CascadeError("nothing to classify: give texts or --file")
    with CascadeClient(args.url) as client:
        if not client.is_ready():
            raise CascadeError(f"no ready Triton server at {args.url} (start one with `cascade serve`)")
        print("label\tconfidence\ttier\ttext")
        for start in range(0, len(texts), args.batch_size):
            chunk = texts[start : start + args.batch_size]
            predictions = client.classify(
                args.task, chunk, max_tier=_tier_arg(args.max_tier), min_tier=_tier_arg(args.min_tier)
            )
            for text, p in zip(chunk, predictions, strict=True):
                short = text if len(text) <= 60 else text[:57] + "..."
                flag = ", best effort" if p.degraded else ""
                print(f"{p.label}\t{p.confidence:.3f}\t{p.tier} ({p.tier_name}{flag})\t{short}")
    return 0


def _print_summary(summary) -> None:
    from rich.console import Console

    console = Console(stderr=False)
    s = summary
    console.print(
        f"{s.job}: {s.rows:,} rows -> {s.out} in {s.wall_s:.1f} s ({s.rows_per_s:,.0f} rows/s"
        + (f"; {s.resumed_chunks} chunk(s) resumed" if s.resumed_chunks else "")
        + (f"; {s.retries} request(s) retried" if s.retries else "")
        + ")"
    )
    if s.tiers:
        mix = ", ".join(f"{name} {n:,} ({n / max(1, sum(s.tiers.values())):.1%})" for name, n in s.tiers.items())
        console.print(f"answered by: {mix}" + (f"; LLM share {s.llm_share:.1%}" if s.llm_share is not None else ""))
    if s.where is not None:
        console.print(f"where label = {s.where!r}: {s.matching_rows:,} rows kept")
    if getattr(s, "degraded_rows", 0) or getattr(s, "degraded_retried", 0):
        console.print(
            f"[yellow]{s.degraded_rows:,} row(s) answered best-effort[/] (a tier was too slow or failed: "
            "column 'degraded')" + (f"; {s.degraded_retried:,} row(s) sent again" if s.degraded_retried else "")
        )
    if s.error_rows:
        console.print(
            f"[yellow]{s.error_rows:,} row(s) could not be processed[/]"
            + (f": see {s.errors_file}" if s.errors_file else " (null embedding in the output)")
        )
    cost = s.cost or {}
    if "llm_large_s_per_row" in cost:
        console.print(
            f"cost: the large tier takes {cost['llm_large_s_per_row'] * 1000:.0f} ms/row (measured on "
            f"{cost['measured_on']}); on every row it would take {cost['llm_every_row_s']:,.0f} s, "
            f"{cost['speedup']:,.0f}x this job's {cost['cascade_s']:.1f} s"
        )
    elif cost:
        console.print(f"cost: {cost['note']}")


def _save_summary(summary, path: Path | None) -> None:
    if path is not None:
        path.write_text(json.dumps(summary.to_dict(), indent=2))


def cmd_filter(args) -> int:
    from cascade.client.table import FilterOptions, run_filter

    options = FilterOptions(
        task=args.task,
        text_column=args.column,
        embedding_column=args.embedding_column,
        where=args.where,
        max_tier=_tier_arg(args.max_tier),
        min_tier=_tier_arg(args.min_tier),
        chunk_rows=args.chunk_rows,
        batch_rows=args.batch_size,
        in_flight=args.in_flight,
        keep_embedding=args.keep_embedding,
        on_degraded=args.on_degraded,
        degraded_retries=args.degraded_retries,
        prefix=args.prefix,
    )
    summary = run_filter(
        args.table, args.out, options, args.url, restart=args.restart, llm_probe_rows=args.llm_probe_rows
    )
    _print_summary(summary)
    _save_summary(summary, args.json)
    return 0


def cmd_eval(args) -> int:
    from cascade.evaluate import evaluate_table, print_report, save_report

    report = evaluate_table(
        args.task, args.table, args.label_column, args.url, _tier_arg(args.max_tier), _tier_arg(args.min_tier),
        text_column=args.column, quiet=False,
    )  # fmt: skip
    print_report(report)
    save_report(report, args.json)
    return 0


def cmd_embed(args) -> int:
    from cascade.client.table import run_embed

    summary = run_embed(
        args.table,
        args.out,
        args.url,
        text_column=args.column,
        column=args.embedding_column,
        float16=args.float16,
        restart=args.restart,
    )
    _print_summary(summary)
    return 0


def cmd_make_table(args) -> int:
    from cascade.client.table import make_table

    result = make_table(
        args.source, args.out, args.rows, column=args.embedding_column, noise=args.noise, seed=args.seed
    )
    print(
        f"{result['rows']:,} rows from {result['source_rows']:,} source rows (noise {result['noise']}) "
        f"-> {result['out']} in {result['seconds']:.1f} s"
    )
    return 0


def cmd_loadtest(args) -> int:
    from cascade import bench, loadtest
    from cascade.tasks import load_task

    names = list(loadtest.SCENARIOS) if args.scenarios == ["all"] else args.scenarios
    for name in names:
        loadtest.scenario(name)  # an unknown name fails before a server starts
    results = loadtest.run_scenarios(
        names,
        load_task(args.task),
        args.repo,
        args.url,
        args.duration,
        args.users,
        args.budget_scale,
        args.data_dir,
        work=args.results_dir / "work" if args.results_dir else None,
        find_max=args.find_max,
    )
    loadtest.print_results(results)
    summary = {"benchmark": "loadtest", "task": args.task, "results": results}
    print(f"saved {bench.save(summary, 'loadtest', args.results_dir or bench.RESULTS_DIR)}")
    return 1 if any(r["breaches"] for r in results) else 0


def cmd_soak(args) -> int:
    from cascade import bench
    from cascade.soak import run_soak
    from cascade.tasks import load_task

    if args.duration <= args.warmup:
        raise InvalidInput(f"--duration ({args.duration} s) must be longer than --warmup ({args.warmup} s)")
    report = run_soak(load_task(args.task), args.repo, args.duration, args.warmup, args.growth, args.data_dir)
    a, b = report["after_warmup"], report["end"]
    print(f"requests {report['requests']}, bad requests refused {report['bad_requests_refused']}, "
          f"unexpected errors {report['error_count']}")  # fmt: skip
    for name in ("server_rss_mb", "stub_rss_mb", "stubs", "shm_files", "shm_mb", "server_fds", "server_threads"):
        print(f"  {name:15} after warm-up {a[name]:>9}  end {b[name]:>9}")
    for name, m in report["rss_medians_mb"].items():
        print(f"  {name:15} median of the first fifth {m['first_fifth']:.1f}, of the last fifth {m['last_fifth']:.1f}")
    print(f"saved {bench.save(report, 'soak', args.results_dir or bench.RESULTS_DIR)}")
    for problem in report["problems"]:
        print(f"SOAK FAILED: {problem}")
    return 0 if report["passed"] else 1


def cmd_demo(args) -> int:
    from cascade.demo import demo_result, run_demo
    from cascade.tasks import load_task

    summary = run_demo(
        load_task(args.task),
        args.repo,
        args.rebuild,
        args.rows,
        args.batch_size,
        args.data_dir,
        teacher=args.teacher,
        sample=args.sample,
        work_root=args.work_dir,
    )
    _save_result("demo", demo_result(summary, _command(args)), args)
    return 0


def cmd_bench(args) -> int:
    from cascade import bench
    from cascade.demo import task_is_built
    from cascade.tasks import load_task

    if args.which == "threads":  # the GGUFs and SST-2 only: no built task, no server
        from cascade import bench_threads

        command = " ".join(["cascade", *sys.argv[1:]])
        result = bench_threads.run(40 if args.rows is None else args.rows, data_dir=args.data_dir, command=command)
        bench_threads.print_table(result)
        print(f"saved {bench.save(result, 'threads')}")
        return 0
    task = load_task(args.task)
    if not task_is_built(task, args.repo):
        raise CascadeError(
            f"task {task.name} is not built in {args.repo}, or was built from an older definition: "
            "run `cascade build` (or make demo)"
        )
    if args.which == "isolation":
        from cascade import bench_isolation

        result = bench_isolation.bench_isolation(task.name, args.repo, args.duration, args.llm_clients)
        print(f"saved {bench.save(result, 'isolation')}")
        print("passed" if result["passed"] else "FAILED: " + "; ".join(result["breaches"]))
        return 0 if result["passed"] else 1
    if args.which == "table":
        from cascade import bench_table

        rows = 1_000_000 if args.rows is None else args.rows
        result = bench_table.bench_table(task, args.repo, rows, args.text_rows, args.llm_rows, args.data_dir)
        bench_table.print_table(result)
        print(f"saved {bench.save(result, f'table-{task.name}')}")
        return 0
    result = bench.bench_gate(task, args.repo, args.iterations, args.data_dir)
    bench.print_gate(result)
    print(f"saved {bench.save(result, 'gate')}")
    return 0


COMMANDS = {
    "serve": cmd_serve,
    "build": cmd_build,
    "label": cmd_label,
    "train": cmd_train,
    "calibrate": cmd_calibrate,
    "export": cmd_export,
    "task": cmd_task,
    "classify": cmd_classify,
    "filter": cmd_filter,
    "eval": cmd_eval,
    "embed": cmd_embed,
    "make-table": cmd_make_table,
    "loadtest": cmd_loadtest,
    "soak": cmd_soak,
    "demo": cmd_demo,
    "bench": cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the "command" of a result file
    try:
        return COMMANDS[args.command](args)
    except CascadeError as exc:
        print(f"cascade {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = ""
        if args.command in ("filter", "embed"):
            hint = f"; finished chunks are kept in {args.out}.parts: rerun the same command to resume"
        print(f"cascade {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
