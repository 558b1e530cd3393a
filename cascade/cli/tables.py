"""The commands that send data through a running server, as its client: ``classify``, the table jobs ``filter``,
``eval`` and ``embed``, and ``make-table``, which scales up ``embed``'s output. Heavy modules are imported inside each
command (the CLI must start fast)."""

from __future__ import annotations

import json
from pathlib import Path

from cascade import contract
from cascade.cli.arguments import report_prices
from cascade.errors import CascadeError
from cascade.llm.cost_report import cost_lines


def _tier_arg(value: str | None):
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def cmd_classify(args) -> int:
    from cascade_client import CascadeClient

    texts = list(args.texts)
    if args.file:
        from cascade.tables.table_io import read_batches, table_schema

        if not args.file.is_file():
            raise CascadeError(f"--file {args.file}: no such file")
        schema, _ = table_schema(args.file, args.column)  # CSV (plain or gzipped), Parquet or Arrow
        if args.column not in schema.names:
            raise CascadeError(f"--file {args.file}: no column {args.column!r} (columns: {schema.names})")
        for batch in read_batches(args.file, args.column, [args.column]):
            texts.extend("" if text is None else str(text) for text in batch.column(0).to_pylist())
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
        + (f" ({s.retried_rows:,} rows)" if s.retries and s.retried_rows else "")
        + (f"; {s.failovers} failover(s) to another server" if s.failovers else "")
        + (f"; engine {s.engine}" if s.engine != "local" else "")
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
    elif cost.get("note"):
        console.print(f"cost: {cost['note']}")
    for line in cost_lines(cost.get("llm")):
        console.print(line)


def _save_summary(summary, path: Path | None) -> None:
    if path is not None:
        path.write_text(json.dumps(summary.to_dict(), indent=2))


def _urls(args) -> list[str]:
    from cascade.tables.ray_worker import split_urls

    return split_urls(args.url)


def _local_url(args) -> str:
    """The local engine's one server; the Ray engine's options refused, rather than ignored."""
    from cascade.errors import ConfigError

    urls = [u.strip() for u in args.url.split(",") if u.strip()]
    if len(urls) != 1:
        raise ConfigError(f"--url {args.url!r}: the local engine sends to one server (several need --engine ray)")
    if args.address is not None or args.concurrency is not None:
        raise ConfigError("--address and --concurrency are options of --engine ray")
    return urls[0]


def cmd_filter(args) -> int:
    from cascade.tables.job import FilterOptions
    from cascade.tables.local import run_filter

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
    if args.engine == "ray":
        from cascade.tables.ray_engine import require_ray

        require_ray()
        from cascade.tables.ray_engine import run_filter_ray

        summary = run_filter_ray(
            args.table, args.out, options, _urls(args), address=args.address, concurrency=args.concurrency,
            restart=args.restart, llm_probe_rows=args.llm_probe_rows, metrics_url=args.metrics_url,
            llm_prices=report_prices(args),
        )  # fmt: skip
    else:
        summary = run_filter(
            args.table, args.out, options, _local_url(args), restart=args.restart, llm_probe_rows=args.llm_probe_rows,
            metrics_url=args.metrics_url, llm_prices=report_prices(args),
        )  # fmt: skip
    _print_summary(summary)
    _save_summary(summary, args.json)
    return 0


def cmd_eval(args) -> int:
    from cascade.cli.evaluate import TEACHER_KEYS, evaluate_table, print_report, save_report

    report = evaluate_table(
        args.task, args.table, args.label_column, args.url, _tier_arg(args.max_tier), _tier_arg(args.min_tier),
        text_column=args.column, quiet=False, metrics_url=args.metrics_url, llm_prices=report_prices(args),
    )  # fmt: skip
    if args.teacher:
        teacher = evaluate_table(
            args.task, args.table, args.label_column, args.url, None, contract.TIER_LLM_LARGE,
            text_column=args.column, quiet=False, metrics_url=args.metrics_url, llm_prices=report_prices(args),
        )  # fmt: skip
        report["teacher"] = {k: teacher[k] for k in TEACHER_KEYS}
    print_report(report)
    save_report(report, args.json)
    return 0


def cmd_embed(args) -> int:
    from cascade.tables.embed_jobs import run_embed

    kwargs = {
        "text_column": args.column, "column": args.embedding_column, "float16": args.float16, "restart": args.restart
    }  # fmt: skip
    if args.engine == "ray":
        from cascade.tables.ray_engine import require_ray

        require_ray()
        from cascade.tables.ray_engine import run_embed_ray

        summary = run_embed_ray(
            args.table, args.out, _urls(args), address=args.address, concurrency=args.concurrency, **kwargs
        )
    else:
        summary = run_embed(args.table, args.out, _local_url(args), **kwargs)
    _print_summary(summary)
    return 0


def cmd_make_table(args) -> int:
    from cascade.tables.embed_jobs import make_table

    result = make_table(
        args.source, args.out, args.rows, column=args.embedding_column, noise=args.noise, seed=args.seed
    )
    print(
        f"{result['rows']:,} rows from {result['source_rows']:,} source rows (noise {result['noise']}) "
        f"-> {result['out']} in {result['seconds']:.1f} s"
    )
    return 0
