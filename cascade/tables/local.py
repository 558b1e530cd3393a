"""Whole tables through the server: ``cascade filter`` (the AI.IF job), ``cascade embed`` and ``make-table``.

A job reads its input (CSV or Parquet, through pyarrow) in fixed chunks of rows; chunk ``k`` is always the
input rows ``[k * chunk_rows, (k + 1) * chunk_rows)``. Each finished chunk is committed as its own Parquet
file under ``OUT.parts/`` (written to a temporary name, then renamed), next to a manifest of the job's
arguments. A rerun with the same arguments skips the committed chunks, so an interrupted job (Ctrl-C, a
killed server) neither loses nor repeats rows; when every chunk is in, the parts are merged into ``OUT``
(again through a temporary file) and removed.

Bad cells do not stop a job: a null, blank or non-UTF-8 text, or an embedding of the wrong length or with
NaN/Inf, gets a message in the ``error`` column (and in ``OUT.errors.csv``) and the job goes on. An
unreachable server is retried with backoff, then the job stops with a message; its committed chunks stay.

This module holds the local engine of the filter job; the jobs' parts live beside it in ``cascade.tables``:
``table_io`` (table files), ``cells`` (cell checks), ``chunk_store`` (committed chunks),
``row_requests`` (requests and retries), ``job`` (options, summary, event loop), ``filter_chunk`` (the checks before
any row is sent, and one chunk through the gate), ``filter_summary`` (the end of a filter job: errors file, counts,
cost) and ``embed_jobs`` (``cascade embed``, ``make-table``). The same jobs on Ray, over many servers:
``cascade.tables.ray_engine``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cascade.tables.filter_chunk import classify_chunk, open_filter
from cascade.tables.filter_summary import finish_filter
from cascade.tables.job import Counts, FilterOptions, JobSummary, job_progress, run_job
from cascade.tables.row_requests import DEFAULT_BACKOFF_S, Retry
from cascade.tables.table_io import chunks, read_batches


def run_filter(
    table: Path,
    out: Path,
    options: FilterOptions,
    url: str,
    *,
    restart: bool = False,
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S,
    llm_probe_rows: int = 8,
    quiet: bool = False,
    metrics_url: str | None = None,
    llm_prices: dict | None = None,
) -> JobSummary:
    """The AI.IF job: every row of ``table`` through the task's gate; see the module docstring. The per-chunk work
    is :func:`cascade.tables.filter_chunk.classify_chunk`, which the Ray engine shares."""
    from cascade_client import AsyncCascadeClient

    job = open_filter(table, out, options, [url], backoff_s, restart, metrics_url, llm_prices)
    table, plan, store, done = job.table, job.plan, job.store, job.store.done()
    retry = Retry(backoff_s)
    counts = Counts()
    skipped_rows = 0

    async def classify(client, limit, k: int, chunk) -> None:
        result_table, chunk_counts = await classify_chunk(plan, client, limit, retry, url, chunk)
        counts.add(chunk_counts)
        await asyncio.to_thread(store.commit, k, result_table)

    start, cpu = time.perf_counter(), time.process_time()
    progress = job_progress(job.total, 0, f"filter {options.task}", quiet)

    async def main() -> None:
        nonlocal skipped_rows
        limit = asyncio.Semaphore(options.in_flight)
        async with AsyncCascadeClient(url) as client:
            running: set[asyncio.Task] = set()
            source = chunks(read_batches(table, options.text_column), options.chunk_rows)
            while True:
                # Decoding happens in a worker thread (pyarrow lets go of the GIL), so replies keep flowing.
                item = await asyncio.to_thread(next, source, None)
                if item is None:
                    break
                k, chunk = item
                if k in done:
                    skipped_rows += chunk.num_rows
                    progress.update(chunk.num_rows)
                    continue
                task = asyncio.create_task(classify(client, limit, k, chunk))
                task.add_done_callback(
                    lambda t, n=chunk.num_rows: progress.update(n) if not t.cancelled() and not t.exception() else None
                )
                running.add(task)
                if len(running) >= 2:  # read the next chunk while this one is in flight
                    finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    for t in finished:
                        t.result()
            if running:
                for t in asyncio.as_completed(running):
                    await t

    run_job(main, store, progress)
    wall = time.perf_counter() - start
    counts.retries = retry.retried
    return finish_filter(
        job, options, wall, skipped_rows, counts, engine="local", client_cpu_s=time.process_time() - cpu, urls=[url],
        llm_probe_rows=llm_probe_rows,
    )  # fmt: skip
