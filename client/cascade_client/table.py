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

This module holds the filter job and the names the CLI and other code take; the jobs' parts live in
``cascade_client``: ``table_io`` (table files), ``cells`` (cell checks), ``chunk_store`` (committed chunks),
``row_requests`` (requests and retries), ``job`` (options, summary, event loop), ``filter_summary`` (the end of a
filter job: errors file, counts, cost) and ``embed_jobs`` (``cascade embed``, ``make-table``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from cascade import contract
from cascade.errors import ConfigError
from cascade_client.cells import check_embedding_column, check_text_column, embedding_cells, text_cells
from cascade_client.chunk_store import ChunkStore, input_identity
from cascade_client.filter_summary import filter_cost, finish_filter
from cascade_client.job import (
    CONFIDENCE_COLUMN,
    DEGRADED_COLUMN,
    ERROR_COLUMN,
    LABEL_COLUMN,
    ON_DEGRADED_RETRY,
    RESULT_COLUMNS,
    TIER_COLUMN,
    FilterOptions,
    JobSummary,
    job_progress,
    reachable_tiers,
    run_job,
)
from cascade_client.row_requests import DEFAULT_BACKOFF_S, Retry, first_contact, request_deadline_s, send_rows
from cascade_client.table_io import check_output, chunks, read_batches, table_schema


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
) -> JobSummary:
    """The AI.IF job: every row of ``table`` through the task's gate; see the module docstring."""
    from cascade_client import AsyncCascadeClient, CascadeClient

    options.check()
    table, out = Path(table), Path(out)
    check_output(out, table)
    schema, total = table_schema(table, options.text_column)
    check_text_column(schema, options.text_column, table)
    emb_column = options.embedding_column if options.embedding_column in schema.names else None
    taken = [options.col(c) for c in RESULT_COLUMNS if options.col(c) in schema.names]
    if taken:
        raise ConfigError(
            f"table {table} already has column(s) {taken}, which the filter job writes: "
            "name the results differently with --prefix (e.g. --prefix ai_)"
        )
    with CascadeClient(url) as sync_client:
        gate = first_contact(lambda: sync_client.gate_config(options.task), url, backoff_s)
        labels = list(gate.labels)
        if options.where is not None and options.where not in labels:
            raise ConfigError(f"--where {options.where!r} is not a label of task {options.task} ({labels})")
        before = sync_client.model_stats()
        served = sync_client.embedder() if emb_column else None
    if emb_column:
        check_embedding_column(schema, emb_column, table, served)
    manifest = {
        "job": "filter",
        "input": input_identity(table),
        "options": {k: v for k, v in asdict(options).items() if k not in ("in_flight", "batch_rows")},
        "labels": labels,
    }
    store = ChunkStore(out, manifest, restart)
    done = store.done()
    # With precomputed embeddings and a max_tier that keeps rows on the embedding tiers, no text is sent.
    tiers_reached = reachable_tiers(gate, options)
    text_free = emb_column is not None and all(t in contract.EMBEDDING_TIERS for t in tiers_reached)
    labels_arr = np.array(labels, dtype=object)
    retry = Retry(backoff_s)
    skipped_rows = degraded_retried = 0

    async def classify_chunk(client, limit, k: int, chunk: pa.Table) -> None:
        nonlocal degraded_retried
        n = chunk.num_rows
        if emb_column:
            emb, has, errors = embedding_cells(chunk.column(emb_column), served[1] if served else None)
        else:
            emb, has, errors = None, np.zeros(n, bool), [None] * n
        # Rows sent with an embedding and no text need no usable text; the others do.
        needs_text = ~has if text_free else np.ones(n, bool)
        texts = None
        if needs_text.any():
            texts, text_errors = text_cells(chunk.column(options.text_column))
            for i in np.flatnonzero(needs_text):
                errors[i] = errors[i] or text_errors[i]
        ok = np.array([e is None for e in errors], bool)
        probs = np.zeros((n, len(labels)), np.float32)
        tiers = np.full(n, -1, np.int32)
        degraded = np.zeros(n, bool)

        def caller(with_embedding: bool):
            async def call(rows: np.ndarray):
                deadline = request_deadline_s(gate, rows.size, tiers_reached, embed=not with_embedding)

                async def once():
                    return await client.classify_arrays(
                        options.task,
                        None if with_embedding and text_free else texts[rows],
                        _take(emb, rows) if with_embedding else None,
                        max_tier=options.max_tier,
                        min_tier=options.min_tier,
                        timeout_s=deadline,
                    )

                return await retry.call(once, f"task {options.task} at {url}")

            return call

        attempts = 1 + (options.degraded_retries if options.on_degraded == ON_DEGRADED_RETRY else 0)
        todo = ok
        for attempt in range(attempts):
            if attempt:  # best-effort rows again, after a pause: the slow tier may have caught up
                await asyncio.sleep(backoff_s[min(attempt - 1, len(backoff_s) - 1)] if backoff_s else 0)
                degraded_retried += int(todo.sum())
            for with_embedding in (True, False):
                rows = np.flatnonzero(todo & (has if with_embedding else ~has))
                if rows.size == 0:
                    continue
                results = await send_rows(caller(with_embedding), rows, options.batch_rows, errors, limit)
                for part, result in results.values():
                    probs[part] = result.probs
                    tiers[part] = result.tier
                    degraded[part] = result.degraded if result.degraded is not None else False
            todo = degraded & np.array([e is None for e in errors], bool)
            if not todo.any():
                break
        answered = np.array([e is None for e in errors], bool)
        label = np.where(answered, labels_arr[probs.argmax(axis=1)], None)
        columns = [c for c in chunk.column_names if options.keep_embedding or c != emb_column]
        result_table = chunk.select(columns).append_column(options.col(LABEL_COLUMN), pa.array(label, pa.string()))
        result_table = result_table.append_column(
            options.col(CONFIDENCE_COLUMN), pa.array(probs.max(axis=1), pa.float32(), mask=~answered)
        )
        result_table = result_table.append_column(options.col(TIER_COLUMN), pa.array(tiers, pa.int32(), mask=~answered))
        result_table = result_table.append_column(
            options.col(DEGRADED_COLUMN), pa.array(degraded, pa.bool_(), mask=~answered)
        )
        result_table = result_table.append_column(options.col(ERROR_COLUMN), pa.array(errors, pa.string()))
        await asyncio.to_thread(store.commit, k, result_table)

    start = time.perf_counter()
    progress = job_progress(total, 0, f"filter {options.task}", quiet)

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
                task = asyncio.create_task(classify_chunk(client, limit, k, chunk))
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
    summary = finish_filter(store, out, options, len(done), wall, skipped_rows, retry.retried)
    summary.degraded_retried = degraded_retried
    with CascadeClient(url) as sync_client:
        summary.cost = filter_cost(sync_client, before, summary, options, labels, table, llm_probe_rows)
    return summary


def _take(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]``, as a view (no copy) when the rows are a contiguous run, as they usually are."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        return values[rows[0] : rows[-1] + 1]
    return values[rows]
