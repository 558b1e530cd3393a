"""The embedding column's jobs: ``cascade embed`` (the server's embedder output added to every row, committed by
chunks like the filter job) and ``make-table`` (a big table grown from an embedded one, for benchmarks)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cascade.errors import ConfigError
from cascade.tables.cells import check_embedding_column, embedding_cells
from cascade.tables.embed_chunk import EMBED_BATCH_ROWS, embed_chunk, open_embed
from cascade.tables.job import EMBEDDING_COLUMN, Counts, JobSummary, OpenedJob, job_progress, run_job
from cascade.tables.row_requests import DEFAULT_BACKOFF_S, Retry
from cascade.tables.table_io import (
    check_table_path,
    chunks,
    read_batches,
    table_format,
    write_table_atomic,
)

__all__ = ["EMBED_BATCH_ROWS", "make_table", "run_embed"]


def run_embed(
    table: Path,
    out: Path,
    url: str,
    *,
    text_column: str = "text",
    column: str = EMBEDDING_COLUMN,
    float16: bool = False,
    chunk_rows: int = 8192,
    batch_rows: int = EMBED_BATCH_ROWS,
    in_flight: int = 2,
    restart: bool = False,
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S,
    quiet: bool = False,
) -> JobSummary:
    """Add ``column`` (the server's ``embedder`` output, a fixed-size list per row) to ``table``. The per-chunk work
    is :func:`cascade.tables.embed_chunk.embed_chunk`, which the Ray engine (``cascade.tables.ray_engine``) shares."""
    from cascade_client import AsyncCascadeClient

    job = open_embed(
        table, out, [url], text_column=text_column, column=column, float16=float16, chunk_rows=chunk_rows,
        batch_rows=batch_rows, backoff_s=backoff_s, restart=restart,
    )  # fmt: skip
    plan, store, done = job.plan, job.store, job.store.done()
    retry = Retry(backoff_s)
    counts = Counts()
    start, cpu = time.perf_counter(), time.process_time()
    progress = job_progress(job.total, 0, "embed", quiet)
    skipped = 0

    async def main() -> None:
        nonlocal skipped
        limit = asyncio.Semaphore(in_flight)
        async with AsyncCascadeClient(url) as client:
            for k, chunk in chunks(read_batches(job.table, text_column), chunk_rows):
                if k not in done:
                    result_table, chunk_counts = await embed_chunk(plan, client, limit, retry, url, chunk)
                    counts.add(chunk_counts)
                    await asyncio.to_thread(store.commit, k, result_table)
                else:
                    skipped += chunk.num_rows
                progress.update(chunk.num_rows)

    run_job(main, store, progress)
    wall = time.perf_counter() - start
    counts.retries = retry.retried
    return finish_embed(job, wall, skipped, counts, engine="local", client_cpu_s=time.process_time() - cpu)


def finish_embed(
    job: OpenedJob, wall: float, skipped: int, counts: Counts, *, engine: str, client_cpu_s: float
) -> JobSummary:
    """The end of an embed job (either engine): the parts merged into the output, and its summary."""
    store, column = job.store, job.plan.field.name
    error_rows = sum(store.read(p, [column]).column(0).null_count for p in store.parts())
    rows = store.merge(job.out)
    store.remove()
    summary = JobSummary(
        job="embed",
        rows=rows,
        out=str(job.out),
        wall_s=wall,
        rows_per_s=(rows - skipped) / wall if wall > 0 else 0.0,
        resumed_chunks=job.resumed,
        error_rows=error_rows,
        engine=engine,
        client_cpu_s=client_cpu_s,
    )
    summary.take(counts)
    return summary


# ------------------------------------------------------------------------------------------ make-table
def make_table(
    source: Path,
    out: Path,
    rows: int,
    *,
    column: str = EMBEDDING_COLUMN,
    noise: float = 0.01,
    seed: int = 0,
    group_rows: int = 65_536,
) -> dict:
    """A big table from an embedded one: its rows repeated up to ``rows``, each repeat's embedding perturbed
    by Gaussian noise of ``noise`` (relative to the unit norm) and renormalized; copy 0 of each row is exact.
    Adds ``source_row`` and ``copy``. Written in row groups, so memory stays bounded."""

    source, out = Path(source), Path(out)
    if rows < 1:
        raise ConfigError(f"--rows must be positive, got {rows}")
    if table_format(out) == "csv":
        raise ConfigError(f"output {out}: make-table writes Parquet or Arrow IPC, not CSV")
    if check_table_path(source) == "csv":
        raise ConfigError(f"table {source}: make-table reads Parquet or Arrow IPC (the output of `cascade embed`)")
    base = pa.Table.from_batches(list(read_batches(source)))
    if column not in base.column_names:
        raise ConfigError(f"table {source}: no embedding column {column!r}; run `cascade embed` first")
    check_embedding_column(base.schema, column, source)
    base = base.filter(pc.is_valid(base.column(column)))
    n = base.num_rows
    if n == 0:
        raise ConfigError(f"table {source}: no row has an embedding")
    emb, _, _ = embedding_cells(base.column(column))
    value_type = base.schema.field(column).type.value_type
    rng = np.random.default_rng(seed)
    t = time.perf_counter()

    def groups():
        for start in range(0, rows, group_rows):
            index = np.arange(start, min(start + group_rows, rows))
            src, copy = index % n, index // n
            vectors = emb[src]
            perturbed = copy > 0
            if perturbed.any() and noise > 0:
                shape = (int(perturbed.sum()), vectors.shape[1])
                jitter = rng.normal(scale=noise / np.sqrt(vectors.shape[1]), size=shape)
                moved = vectors[perturbed] + jitter.astype(np.float32)
                vectors[perturbed] = moved / np.linalg.norm(moved, axis=1, keepdims=True)
            part = base.take(pa.array(src)).drop_columns([column])
            flat = pa.array(vectors.reshape(-1).astype(value_type.to_pandas_dtype()), value_type)
            part = part.append_column(
                base.schema.field(column), pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
            )
            part = part.append_column("source_row", pa.array(src, pa.int64()))
            yield part.append_column("copy", pa.array(copy, pa.int32()))

    parts = groups()
    first = next(parts)
    written = write_table_atomic(_prepend(first, parts), first.schema, out)
    return {"rows": written, "source_rows": n, "noise": noise, "seconds": time.perf_counter() - t, "out": str(out)}


def _prepend(first, rest):
    yield first
    yield from rest
