"""The ``cascade`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cascade import contract, crash, results  # noqa: F401 - results: the load average before the run
from cascade.cli.arguments import (
    add_cost,
    add_embedder,
    add_engine,
    add_examples,
    add_llm_endpoints,
    add_repo,
    add_results,
    add_sampling,
    add_task,
    add_work,
)
from cascade.cli.bench import cmd_bench, cmd_demo, cmd_loadtest, cmd_soak
from cascade.cli.build import cmd_build, cmd_calibrate, cmd_export, cmd_label, cmd_task, cmd_train
from cascade.cli.doctor import cmd_doctor
from cascade.cli.serve import cmd_serve
from cascade.cli.tables import cmd_classify, cmd_embed, cmd_eval, cmd_filter, cmd_make_table
from cascade.errors import CascadeError
from cascade.ops.soak import DEFAULT_WARMUP_S
from cascade.tables.job import DEFAULT_BATCH_ROWS, DEFAULT_IN_FLIGHT, EMBEDDING_COLUMN
from cascade.tables.table_io import DEFAULT_CHUNK_ROWS
from cascade_export.distill.prompt_task import CREATE_TIERS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start tritonserver on a model repository")
    add_repo(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    p.add_argument("--http-port", type=int, default=contract.DEFAULT_HTTP_PORT)
    p.add_argument("--grpc-port", type=int, default=contract.DEFAULT_GRPC_PORT)
    p.add_argument("--metrics-port", type=int, default=contract.DEFAULT_METRICS_PORT)
    p.add_argument(
        "--model-control-mode",
        choices=("none", "explicit"),
        default="explicit",
        help="explicit (default): every model loaded at start, and new tasks (cascade task create) loaded while it "
        "runs; none: the models of the start only",
    )
    p.add_argument("--tls-cert", type=Path, default=None, help="gRPC over TLS: the server certificate (PEM)")
    p.add_argument("--tls-key", type=Path, default=None, help="gRPC over TLS: its private key (PEM)")
    p.add_argument("--log-verbose", type=int, default=0)
    p.add_argument(
        "--llm-threads",
        type=int,
        default=None,
        help=f"threads of each llama.cpp model (${contract.LLM_THREADS_ENV}; default: half the server's cores)",
    )
    p.add_argument("--skip-doctor", action="store_true", help="start without the quick checks of `cascade doctor`")

    p = sub.add_parser("build", help="train, calibrate and export a task into the model repository")
    add_repo(p)
    add_task(p)
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--calib-rows", type=int, default=1000)
    p.add_argument("--encoder-epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", type=Path, default=None, help="teacher labels (`cascade label`'s labelled.csv)")
    p.add_argument("--calib-fraction", type=float, default=0.5, help="with --labels: rows held out to calibrate")
    p.add_argument("--target", type=float, default=None, help="agreement to guarantee (default: the task's)")
    add_examples(p, "with --labels, they join the training rows where they teach tier 0 better (never calibrate)")
    add_embedder(p)
    add_llm_endpoints(p)
    add_results(p)

    p = sub.add_parser("label", help="have the teacher label a sample of a table (cached, resumable)")
    add_task(p)
    p.add_argument("--table", type=Path, default=None, help="CSV or Parquet (default: the task's train split)")
    p.add_argument("--column", default=None, help="text column (default: the task's, else 'text')")
    p.add_argument("--id-column", default=None, help="row id column (default: row positions)")
    add_sampling(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--teacher",
        default="llm_large",
        help="llm_large (through the server), openai:MODEL@URL (an endpoint, called directly; key from "
        "$OPENAI_API_KEY) or column:NAME (labels you hold)",
    )
    add_repo(p)  # --strategy active embeds rows with this repository's embedder
    p.add_argument("--url", default=f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}", help="gRPC endpoint of the server")
    add_examples(p, "the teacher is checked on them with the task's prompt first; one that cannot do the task stops")
    p.add_argument("--min-teacher-accuracy", type=float, default=None, help="stop below this accuracy on the examples")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="with --teacher openai:...: the key's variable")
    p.add_argument("--llm-concurrency", type=int, default=4, help="with --teacher openai:...: requests in flight")
    add_work(p)

    p = sub.add_parser("train", help="train tiers 0-2 on teacher (or gold) labels into the task's work folder")
    add_repo(p)
    add_task(p)
    add_embedder(p)
    p.add_argument("--labels", type=Path, default=None, help="teacher labels (`cascade label`'s labelled.csv)")
    p.add_argument("--calib-fraction", type=float, default=0.5, help="with --labels: rows held out to calibrate")
    p.add_argument("--train-rows", type=int, default=2000, help="without --labels: gold rows to train on")
    p.add_argument("--calib-rows", type=int, default=1000, help="without --labels: gold rows to calibrate on")
    p.add_argument("--encoder-epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    add_work(p)

    p = sub.add_parser("calibrate", help="choose thresholds with a Clopper-Pearson guarantee; plot them")
    add_repo(p)
    add_task(p)
    p.add_argument("--target", type=float, default=None, help="agreement to guarantee (default: the task's)")
    p.add_argument("--delta", type=float, default=None, help="1 - confidence of the guarantee (default: the task's)")
    p.add_argument("--keep-all-tiers", action="store_true", help="keep tiers that miss the target (debugging)")
    p.add_argument(
        "--budget-ms", type=float, default=None, help="budget mode: the highest target whose expected ms/row fits"
    )
    add_work(p)

    p = sub.add_parser("export", help="write the trained, calibrated task into the model repository atomically")
    add_repo(p)
    add_task(p)
    add_work(p)
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
    p.add_argument(
        "--labels",
        required=True,
        help="comma-separated label names (also the LLM's answers), or name=description pairs "
        "('ham=an ordinary message,spam=unsolicited advertising': the LLM answers with the descriptions)",
    )
    p.add_argument("--column", default="text", help="text column (default: %(default)s)")
    p.add_argument("--id-column", default=None)
    add_examples(p, "the teacher is checked on them and the prompt form that answers them best is kept (a teacher "
                  "no better than the most common label stops the job); they also train where they help")  # fmt: skip
    p.add_argument("--min-teacher-accuracy", type=float, default=None, help="stop below this accuracy on the examples")
    p.add_argument("--yes", action="store_true", help="without --examples, do not ask to confirm the first labels")
    add_cost(p)
    add_sampling(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiers", default=",".join(CREATE_TIERS), help="comma-separated (default: %(default)s)")
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--delta", type=float, default=0.05)
    p.add_argument("--encoder-epochs", type=int, default=2)
    p.add_argument("--url", default=f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}", help="gRPC endpoint of the server")
    add_repo(p)
    add_work(p)

    p = sub.add_parser("classify", help="classify texts through a running server")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--file", type=Path, help="a table (CSV, .csv.gz, Parquet or Arrow) with a text column")
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
    add_cost(p)
    p.add_argument(
        "--on-degraded",
        choices=("keep", "retry"),
        default="keep",
        help="rows answered best-effort (a slow or failed tier): keep that answer, or send them again "
        "--degraded-retries times and keep the last answer (default: %(default)s)",
    )
    p.add_argument("--degraded-retries", type=int, default=2, help="with --on-degraded retry (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="also write the summary as JSON here")
    add_engine(p)

    p = sub.add_parser("eval", help="a labelled table through a served task: accuracy, per tier, LLM share, rows/s")
    p.add_argument("task", help="the task (gate model) to run")
    p.add_argument("--table", type=Path, required=True, help="CSV or Parquet with a text and a label column")
    p.add_argument("--label-column", required=True, help="label names or label indices of the task")
    p.add_argument("--column", default="text", help="text column (default: %(default)s)")
    p.add_argument("--max-tier", default=None, help="answer at this tier or cheaper")
    p.add_argument("--min-tier", default=None, help="skip tiers cheaper than this")
    p.add_argument("--teacher", action="store_true", help="also score the table with the teacher (llm_large) alone")
    add_cost(p)
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    p.add_argument("--url", default=f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}", help="gRPC endpoint of the server")

    p = sub.add_parser("embed", help="add the server's embedding of each row to a table (resumable)")
    p.add_argument("table", type=Path, help="CSV or Parquet")
    p.add_argument("--out", type=Path, required=True, help="Parquet (or CSV) to write")
    p.add_argument("--column", default="text", help="text column (default: %(default)s)")
    p.add_argument("--embedding-column", default=EMBEDDING_COLUMN, help="the column to add (default: %(default)s)")
    p.add_argument("--float16", action="store_true", help="store float16 (half the size; see README for accuracy)")
    p.add_argument("--restart", action="store_true", help="discard an unfinished job's chunks and start over")
    add_engine(p)

    p = sub.add_parser("make-table", help="a large synthetic table from an embedded one (throughput at scale)")
    p.add_argument("--from", dest="source", type=Path, required=True, help="Parquet written by `cascade embed`")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="Parquet to write")
    p.add_argument("--embedding-column", default=EMBEDDING_COLUMN)
    p.add_argument("--noise", type=float, default=0.01, help="perturbation of repeated embeddings (relative norm)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("loadtest", help="Locust scenarios against latency budgets (starts a server without --url)")
    p.add_argument("scenarios", nargs="+", help="scenario names, or all (see cascade/ops/loadtest.py)")
    add_repo(p)
    add_task(p)
    p.add_argument("--url", default=None, help="a running server's gRPC endpoint (default: start one on --repo)")
    p.add_argument("--duration", type=int, default=30, help="seconds per scenario (step: its own steps)")
    p.add_argument("--users", type=int, default=None, help="override the scenario's user count")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply the latency budgets (e.g. 10 in CI)")
    p.add_argument("--find-max", action="store_true", help="climb each scenario's steps: highest rps within budget")
    p.add_argument("--rows", type=int, default=400, help="held-out rows sorted into easy/mix/hard (%(default)s)")
    p.add_argument("--results-dir", type=Path, default=None, help="where the JSON goes (default: bench/results)")

    p = sub.add_parser("soak", help="mixed traffic for a while: server memory, stubs and /dev/shm must stay flat")
    add_repo(p)
    add_task(p)
    p.add_argument("--duration", type=int, default=600, help="seconds of traffic (default: %(default)s)")
    p.add_argument(
        "--warmup", type=int, default=DEFAULT_WARMUP_S, help="seconds before memory is the baseline (%(default)s)"
    )
    p.add_argument("--growth", type=float, default=0.10, help="allowed memory growth after the warm-up (ratio)")
    p.add_argument("--results-dir", type=Path, default=None, help="where the JSON goes (default: bench/results)")

    p = sub.add_parser("demo", help="build the demo task if needed, serve it, classify labelled rows")
    add_repo(p)
    add_task(p)
    p.add_argument("--rows", type=int, default=None, help="validation rows to classify (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rebuild", action="store_true")
    p.add_argument(
        "--teacher", choices=("llm_large", "gold"), default="llm_large", help="who labels the rows the tiers learn from"
    )
    p.add_argument("--sample", type=int, default=1000, help="rows the teacher labels (default: %(default)s)")
    add_work(p)
    add_results(p)
    p.add_argument("--skip-doctor", action="store_true", help="start without the quick checks of `cascade doctor`")

    p = sub.add_parser("doctor", help="check in seconds that this install can serve; print what to fix")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--quick", action="store_true", help="the fast checks only: no llama.cpp subprocess, no sha256")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")

    p = sub.add_parser("bench", help="benchmarks; results go to bench/results/")
    p.add_argument("which", choices=("gate", "table", "threads", "isolation"))
    add_repo(p)
    add_task(p)
    p.add_argument("--iterations", type=int, default=300, help="gate: requests per case")
    p.add_argument(
        "--rows",
        type=int,
        default=None,
        help="table: rows of the synthetic table (1,000,000); threads: rows per case (40)",
    )
    p.add_argument("--text-rows", type=int, default=2_000, help="table: rows classified from text")
    p.add_argument("--llm-rows", type=int, default=300, help="table: rows sent to the large tier")
    p.add_argument("--duration", type=float, default=20.0, help="isolation: seconds per phase")
    p.add_argument("--llm-clients", type=int, default=3, help="isolation: clients saturating llm_large")
    return parser


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
    "doctor": cmd_doctor,
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the "command" of a result file
    try:
        return COMMANDS[args.command](args)
    except CascadeError as exc:
        why = crash.explain(str(exc))  # a model's process died: its crash record says of what, and the fix
        print(f"cascade {args.command}: error: {why or exc}", file=sys.stderr)
        if why:
            print(f"  (the server said: {exc})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = ""
        if args.command in ("filter", "embed"):
            hint = f"; finished chunks are kept in {args.out}.parts: rerun the same command to resume"
        print(f"cascade {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
