"""The end of a filter job: its committed chunks counted (tiers, degraded and matching rows) and merged into the
output, the rows in error written to ``OUT.errors.csv``, and what the job cost against the large LLM tier."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from cascade import contract
from cascade.errors import ServerError
from cascade.llm.cost_report import cost_report, scrape
from cascade.tables.cells import text_cells
from cascade.tables.chunk_store import ChunkStore
from cascade.tables.job import (
    DEGRADED_COLUMN,
    ERROR_COLUMN,
    LABEL_COLUMN,
    TIER_COLUMN,
    Counts,
    FilterOptions,
    JobSummary,
    OpenedJob,
)
from cascade.tables.table_io import chunks, read_batches


def finish_filter(
    job: OpenedJob, options: FilterOptions, wall: float, skipped_rows: int, counts: Counts, *, engine: str,
    client_cpu_s: float, urls: list[str], llm_probe_rows: int,
) -> JobSummary:  # fmt: skip
    """The end of a filter job (either engine): the parts merged into the output, and its summary with the work's
    ``counts`` and its cost (:func:`cost_from_first`)."""
    summary = _merge(job.store, job.out, options, job.resumed, wall, skipped_rows)
    summary.take(counts)
    summary.engine, summary.client_cpu_s = engine, client_cpu_s
    after = scrape(job.metrics_url)
    summary.cost = cost_from_first(urls, job.before, summary, options, list(job.plan.labels), job.table, llm_probe_rows)
    sent = round(summary.rows_per_s * summary.wall_s) if summary.rows_per_s else summary.rows  # this run's rows
    llm = cost_report(job.metrics_before, after, sent, since_start=scrape(job.metrics_url), prices=job.llm_prices)
    summary.cost = (summary.cost or {}) | {"llm": llm}
    return summary


def _merge(
    store: ChunkStore, out: Path, options: FilterOptions, resumed: int, wall: float, skipped_rows: int
) -> JobSummary:
    parts = store.parts()
    tier_counts: dict[int, int] = {}
    rows = matching = degraded = 0
    error_rows: list[tuple[int, str]] = []
    offset = 0
    for path in parts:
        names = [options.col(c) for c in (LABEL_COLUMN, TIER_COLUMN, DEGRADED_COLUMN, ERROR_COLUMN)]
        summary = store.read(path, names)
        n = summary.num_rows
        rows += n
        degraded += pc.sum(summary.column(options.col(DEGRADED_COLUMN))).as_py() or 0
        for item in pc.value_counts(summary.column(options.col(TIER_COLUMN))).to_pylist():
            if item["values"] is not None:
                tier_counts[item["values"]] = tier_counts.get(item["values"], 0) + item["counts"]
        errors = summary.column(options.col(ERROR_COLUMN))
        if errors.null_count != n:
            for i, message in enumerate(errors.to_pylist()):
                if message is not None:
                    error_rows.append((offset + i, message))
        if options.where is not None:
            matching += pc.sum(pc.equal(summary.column(options.col(LABEL_COLUMN)), options.where)).as_py() or 0
        offset += n

    where = options.where
    store.merge(out, None if where is None else lambda t: pc.equal(t.column(options.col(LABEL_COLUMN)), where))
    stem = out.name[: -len(".csv.gz")] if out.name.lower().endswith(".csv.gz") else out.stem
    errors_file = out.with_name(stem + ".errors.csv")
    if error_rows:
        import pyarrow.csv as pcsv

        pcsv.write_csv(pa.table({"row": [r for r, _ in error_rows], "error": [m for _, m in error_rows]}), errors_file)
    elif errors_file.exists():
        errors_file.unlink()
    store.remove()
    answered = sum(tier_counts.values())
    llm = sum(n for t, n in tier_counts.items() if t in contract.LLM_TIERS)
    done_rows = rows - skipped_rows
    return JobSummary(
        job="filter",
        rows=rows,
        out=str(out),
        wall_s=wall,
        rows_per_s=done_rows / wall if wall > 0 else 0.0,
        resumed_chunks=resumed,
        error_rows=len(error_rows),
        errors_file=str(errors_file) if error_rows else None,
        degraded_rows=degraded,
        tiers={contract.TIER_NAMES.get(t, str(t)): n for t, n in sorted(tier_counts.items())},
        llm_share=llm / answered if answered else None,
        where=options.where,
        matching_rows=matching if options.where is not None else None,
    )


def cost_from_first(urls, before, summary, options, labels, table, probe_rows) -> dict | None:
    """The large tier's cost (:func:`filter_cost`), from the first server that still answers: its seconds per row
    are measured on the rows it served."""
    from cascade_client import CascadeClient

    for url in urls:
        try:
            with CascadeClient(url) as client:
                return filter_cost(client, before[url], summary, options, labels, table, probe_rows)
        except ServerError:
            continue
    return {"note": "no server answers at the end of the job: no estimate"}


def filter_cost(
    client, before: dict, summary: JobSummary, options, labels, table: Path, probe_rows: int
) -> dict | None:
    """What the job cost against the large tier on every row, from the server's own counters: the large
    tier's seconds per row as measured in this job, else since the server started, else on a probe."""
    large = contract.tier_model_name(options.task, contract.TIER_LLM_LARGE)
    after = client.model_stats()
    if large not in after:
        return {"note": f"no {large} model on the server: no estimate"}
    delta = after[large] - before.get(large, type(after[large])())
    source = "this job"
    if delta.rows == 0:
        delta, source = after[large], "since the server started"
    if delta.rows == 0 and probe_rows > 0:
        texts = _probe_texts(table, options.text_column, probe_rows)
        if texts:
            t = time.perf_counter()
            client.score(large, [("", text, "") for text in texts], labels)
            delta = type(delta)(rows=len(texts), compute_s=time.perf_counter() - t)
            source = "a probe"
    if delta.rows == 0:
        return {"note": f"{large} has served no rows: no estimate"}
    per_row = delta.compute_s / delta.rows
    done_rows = summary.rows_per_s * summary.wall_s
    llm_every_row_s = per_row * summary.rows
    return {
        "llm_large_s_per_row": per_row,
        "measured_on": f"{delta.rows} rows ({source})",
        "llm_every_row_s": llm_every_row_s,
        "cascade_s": summary.wall_s,
        "cascade_rows": done_rows,
        "speedup": (per_row * done_rows) / summary.wall_s if summary.wall_s > 0 else None,
    }


def _probe_texts(table: Path, column: str, n: int) -> list[str]:
    for _, chunk in chunks(read_batches(table, column, [column]), max(n, 1)):
        texts, errors = text_cells(chunk.column(column))
        return [t.decode("utf-8") for t, e in zip(texts, errors, strict=True) if e is None][:n]
    return []
