"""The ``cascade`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cascade import contract
from cascade.errors import CascadeError
from cascade.export.distill import CREATE_TIERS
from cascade.tasks import DEFAULT_DATA_DIR, REPO_ROOT

DEFAULT_REPO = REPO_ROOT / "model_repository" / "cpu"
DEFAULT_WORK = REPO_ROOT / "runs"


def _add_repo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="model repository (default: %(default)s)")


def _add_task(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="sst2", help="task name (tasks/NAME.toml) or a task TOML file")
    parser.add_argument(
        "--data-dir", default=None, help=f"datasets folder (default: $CASCADE_DATA_DIR or {DEFAULT_DATA_DIR})"
    )


def _add_work(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--work-dir", type=Path, default=DEFAULT_WORK, help="distillation files, per task (default: %(default)s)"
    )


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
    p.add_argument("--log-verbose", type=int, default=0)

    p = sub.add_parser("build", help="train, calibrate and export a task into the model repository")
    _add_repo(p)
    _add_task(p)
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--calib-rows", type=int, default=1000)
    p.add_argument("--encoder-epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", type=Path, default=None, help="teacher labels (`cascade label`'s labelled.csv)")
    p.add_argument("--calib-fraction", type=float, default=0.3, help="with --labels: rows held out to calibrate")

    p = sub.add_parser("label", help="have the teacher label a sample of a table (cached, resumable)")
    _add_task(p)
    p.add_argument("--table", type=Path, default=None, help="CSV or Parquet (default: the task's train split)")
    p.add_argument("--column", default=None, help="text column (default: the task's, else 'text')")
    p.add_argument("--id-column", default=None, help="row id column (default: row positions)")
    p.add_argument("--sample", type=int, default=1000, help="rows to label (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--teacher", default="llm_large", help="llm_large (through the server) or column:NAME (labels you hold)"
    )
    p.add_argument("--url", default=f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}", help="gRPC endpoint of the server")
    _add_work(p)

    p = sub.add_parser("train", help="train tiers 0-2 on teacher (or gold) labels into the task's work folder")
    _add_repo(p)
    _add_task(p)
    p.add_argument("--labels", type=Path, default=None, help="teacher labels (`cascade label`'s labelled.csv)")
    p.add_argument("--calib-fraction", type=float, default=0.3, help="with --labels: rows held out to calibrate")
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

    p = sub.add_parser("task", help="tasks in a running server")
    tsub = p.add_subparsers(dest="task_command", required=True)
    p = tsub.add_parser("create", help="label -> train -> calibrate -> export -> load, into a running server")
    p.add_argument("name", help="the new task's name (its gate model)")
    p.add_argument("--table", type=Path, required=True, help="CSV or Parquet with the texts")
    p.add_argument("--prompt", required=True, help="the question; '{text}' marks where a row goes")
    p.add_argument("--labels", required=True, help="comma-separated label names (also the LLM's answers)")
    p.add_argument("--column", default="text", help="text column (default: %(default)s)")
    p.add_argument("--id-column", default=None)
    p.add_argument("--sample", type=int, default=1000)
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

    p = sub.add_parser("bench", help="benchmarks; results go to bench/results/")
    p.add_argument("which", choices=("gate",))
    _add_repo(p)
    _add_task(p)
    p.add_argument("--iterations", type=int, default=300)
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
        )
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
    )


def cmd_build(args) -> int:
    from cascade.export.build import build_task
    from cascade.tasks import load_task

    options = _build_options(args)
    build_task(load_task(args.task), args.repo, options)
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
        sample=args.sample,
        seed=args.seed,
        teacher=args.teacher,
        url=args.url,
        data_dir=args.data_dir,
    )
    rate = summary["teacher_rows_per_s"]
    print(
        f"{summary['sample']} rows labelled by {summary['teacher']}: {summary['labelled_rows']} new, "
        f"{summary['cached_rows']} from the cache; teacher {summary['teacher_s']:.1f} s"
        + (f" ({rate:.1f} rows/s)" if rate else "")
    )
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

    export_task(load_task(args.task), args.repo, _stage(args))
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
        sample=args.sample,
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
                print(f"{p.label}\t{p.confidence:.3f}\t{p.tier} ({p.tier_name})\t{short}")
    return 0


def cmd_demo(args) -> int:
    from cascade.demo import run_demo
    from cascade.tasks import load_task

    run_demo(
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
    return 0


def cmd_bench(args) -> int:
    from cascade import bench
    from cascade.demo import task_is_built
    from cascade.tasks import load_task

    task = load_task(args.task)
    if not task_is_built(task, args.repo):
        raise CascadeError(
            f"task {task.name} is not built in {args.repo}, or was built from an older definition: "
            "run `cascade build` (or make demo)"
        )
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
    "demo": cmd_demo,
    "bench": cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CascadeError as exc:
        print(f"cascade {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cascade {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
