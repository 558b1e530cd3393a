"""One chunk of ``cascade embed``, whichever engine runs it: the job's checks and plan before any row is sent
(:func:`plan_embed`), then per chunk the texts checked, sent to the server's embedder and the embedding column added
(:func:`embed_chunk`). The local engine (:mod:`cascade.tables.embed_jobs`) and the Ray engine's workers
(:mod:`cascade.tables.ray_engine`) call the same functions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from cascade import contract, embedders
from cascade.errors import ConfigError
from cascade.tables.cells import check_text_column, text_cells
from cascade.tables.chunk_store import ChunkStore, input_identity
from cascade.tables.job import Counts, OpenedJob
from cascade.tables.row_requests import Retry, first_contact, send_rows
from cascade.tables.table_io import check_output, table_schema

EMBED_BATCH_ROWS = 256


@dataclass(frozen=True)
class EmbedPlan:
    """What an embed job settled before sending any row; plain data, so a Ray worker gets a copy."""

    text_column: str
    #: The column to add: a fixed-size list of the embedder's width, recording the embedder in its metadata.
    field: pa.Field
    batch_rows: int = EMBED_BATCH_ROWS

    @property
    def dim(self) -> int:
        return self.field.type.list_size

    async def run(self, client, limit, retry: Retry, url: str, chunk: pa.Table):
        return await embed_chunk(self, client, limit, retry, url, chunk)


def plan_embed(
    schema: pa.Schema,
    source,
    urls: list[str],
    *,
    text_column: str,
    column: str,
    float16: bool,
    batch_rows: int,
    backoff_s: tuple[float, ...],
) -> EmbedPlan:
    """Check the job's arguments against the table's schema and every server (the first-contact backoff), before
    any row is sent."""
    from cascade_client import CascadeClient

    check_text_column(schema, text_column, source)
    if column in schema.names:
        raise ConfigError(f"table {source} already has a column {column!r}")
    served = None
    for url in urls:
        with CascadeClient(url) as sync_client:
            first_contact(sync_client.model_stats, url, backoff_s)
            this = sync_client.embedder()
        if served is not None and this != served:
            raise ConfigError(f"the servers disagree on the embedder: {urls[0]} serves {served}, {url} serves {this}")
        served = this
    embedder_name, dim = served
    value_type = pa.float16() if float16 else pa.float32()
    # The column records its embedder, so that a server with another one refuses it (check_embedding_column).
    field = pa.field(column, pa.list_(value_type, dim), metadata={embedders.TABLE_METADATA_KEY: embedder_name})
    return EmbedPlan(text_column, field, batch_rows)


def embed_manifest(plan: EmbedPlan, input_identity: dict, chunk_rows: int) -> dict:
    """The manifest of an embed job's committed chunks; not the engine, so that either engine resumes the other's."""
    return {
        "job": "embed",
        "input": input_identity,
        "options": {
            "text_column": plan.text_column,
            "column": plan.field.name,
            "float16": plan.field.type.value_type == pa.float16(),
            "chunk_rows": chunk_rows,
        },
    }


def open_embed(
    table, out, urls: list[str], *, text_column: str, column: str, float16: bool, chunk_rows: int, batch_rows: int,
    backoff_s: tuple[float, ...], restart: bool,
) -> OpenedJob:  # fmt: skip
    """An embed job's checks (output, table schema, every server's embedder) and its chunk store, for either engine."""
    table, out = Path(table), Path(out)
    check_output(out, table)
    schema, total = table_schema(table, text_column)
    plan = plan_embed(
        schema, table, urls, text_column=text_column, column=column, float16=float16, batch_rows=batch_rows,
        backoff_s=backoff_s,
    )  # fmt: skip
    store = ChunkStore(out, embed_manifest(plan, input_identity(table), chunk_rows), restart)
    return OpenedJob(table, out, total, plan, store, len(store.done()))


async def embed_chunk(
    plan: EmbedPlan, client, limit: asyncio.Semaphore, retry: Retry, url: str, chunk: pa.Table
) -> tuple[pa.Table, Counts]:
    """``chunk`` with the embedding column added (null where the text is unusable), and what it counted."""
    import tritonclient.grpc.aio as aioclient

    counts = Counts(rows=chunk.num_rows)
    texts, errors = text_cells(chunk.column(plan.text_column))
    dim, value_type = plan.dim, plan.field.type.value_type
    out_emb = np.zeros((chunk.num_rows, dim), np.float32)

    async def call(rows: np.ndarray):
        tensor = aioclient.InferInput(contract.TEXT.name, [rows.size, 1], contract.TEXT.datatype)
        tensor.set_data_from_numpy(texts[rows].reshape(-1, 1))
        outputs = [aioclient.InferRequestedOutput(contract.EMBEDDING.name)]
        result = await retry.call(
            lambda: client.infer(contract.EMBEDDER_MODEL, [tensor], outputs=outputs),
            f"{contract.EMBEDDER_MODEL} at {url}",
            first_retry=partial(counts.add_retried, int(rows.size)),
        )
        return result.as_numpy(contract.EMBEDDING.name)

    ok = np.flatnonzero([e is None for e in errors])
    for part, result in (await send_rows(call, ok, plan.batch_rows, errors, limit)).values():
        out_emb[part] = result
    valid = np.array([e is None for e in errors], bool)
    values = pa.FixedSizeListArray.from_arrays(
        pa.array(out_emb.astype(value_type.to_pandas_dtype()).reshape(-1), value_type),
        dim,
        mask=pa.array(~valid),
    )
    counts.error_rows = int((~valid).sum())
    return chunk.append_column(plan.field, values), counts
