"""The embedding column's jobs: ``cascade embed`` (the server's embedder output added to every row, committed by
chunks like the filter job) and ``make-table`` (a big table grown from an embedded one, for benchmarks)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cascade import contract, embedders
from cascade.errors import ConfigError
from cascade_client.cells import check_embedding_column, check_text_column, embedding_cells, text_cells
from cascade_client.chunk_store import ChunkStore, input_identity
from cascade_client.job import EMBEDDING_COLUMN, JobSummary, job_progress, run_job
from cascade_client.row_requests import DEFAULT_BACKOFF_S, Retry, first_contact, send_rows
from cascade_client.table_io import (
    check_output,
    check_table_path,
    chunks,
    read_batches,
    table_format,
    table_schema,
    write_table_atomic,
)

EMBED_BATCH_ROWS = 256


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
    """Add ``column`` (the server's ``embedder`` output, a fixed-size list per row) to ``table``."""
    import tritonclient.grpc.aio as aioclient

    from cascade_client import AsyncCascadeClient, CascadeClient

    table, out = Path(table), Path(out)
    check_output(out, table)
    schema, total = table_schema(table, text_column)
    check_text_column(schema, text_column, table)
    if column in schema.names:
        raise ConfigError(f"table {table} already has a column {column!r}")
    with CascadeClient(url) as sync_client:
        first_contact(sync_client.model_stats, url, backoff_s)
        embedder_name, dim = sync_client.embedder()
    value_type = pa.float16() if float16 else pa.float32()
    # The column records its embedder, so that a server with another one refuses it (check_embedding_column).
    field = pa.field(column, pa.list_(value_type, dim), metadata={embedders.TABLE_METADATA_KEY: embedder_name})
    manifest = {
        "job": "embed",
        "input": input_identity(table),
        "options": {"text_column": text_column, "column": column, "float16": float16, "chunk_rows": chunk_rows},
    }
    store = ChunkStore(out, manifest, restart)
    done = store.done()
    retry = Retry(backoff_s)

    async def embed_chunk(client, limit, k: int, chunk: pa.Table) -> None:
        texts, errors = text_cells(chunk.column(text_column))
        n = chunk.num_rows
        out_emb = np.zeros((n, dim), np.float32)

        async def call(rows: np.ndarray):
            tensor = aioclient.InferInput(contract.TEXT.name, [rows.size, 1], contract.TEXT.datatype)
            tensor.set_data_from_numpy(texts[rows].reshape(-1, 1))
            outputs = [aioclient.InferRequestedOutput(contract.EMBEDDING.name)]

            async def once():
                return await client.infer(contract.EMBEDDER_MODEL, [tensor], outputs=outputs)

            return (await retry.call(once, f"{contract.EMBEDDER_MODEL} at {url}")).as_numpy(contract.EMBEDDING.name)

        ok = np.flatnonzero([e is None for e in errors])
        for part, result in (await send_rows(call, ok, batch_rows, errors, limit)).values():
            out_emb[part] = result
        valid = np.array([e is None for e in errors], bool)
        values = pa.FixedSizeListArray.from_arrays(
            pa.array(out_emb.astype(value_type.to_pandas_dtype()).reshape(-1), value_type),
            dim,
            mask=pa.array(~valid),
        )
        result_table = chunk.append_column(field, values)
        await asyncio.to_thread(store.commit, k, result_table)

    start = time.perf_counter()
    progress = job_progress(total, 0, "embed", quiet)
    skipped = 0

    async def main() -> None:
        nonlocal skipped
        limit = asyncio.Semaphore(in_flight)
        async with AsyncCascadeClient(url) as client:
            for k, chunk in chunks(read_batches(table, text_column), chunk_rows):
                if k not in done:
                    await embed_chunk(client, limit, k, chunk)
                else:
                    skipped += chunk.num_rows
                progress.update(chunk.num_rows)

    run_job(main, store, progress)
    wall = time.perf_counter() - start
    rows = store.merge(out)
    error_rows = sum(store.read(p, [column]).column(0).null_count for p in store.parts())
    store.remove()
    return JobSummary(
        job="embed",
        rows=rows,
        out=str(out),
        wall_s=wall,
        rows_per_s=(rows - skipped) / wall if wall > 0 else 0.0,
        resumed_chunks=len(done),
        error_rows=error_rows,
        retries=retry.retried,
    )


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
