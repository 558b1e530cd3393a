"""One chunk of a filter job, whichever engine runs it: the job's checks and plan before any row is sent
(:func:`plan_filter`), then per chunk its cells checked, its rows sent through the task's gate (best-effort rows sent
again when asked) and the result table built (:func:`classify_chunk`). The local engine (:mod:`cascade.tables.local`)
and the Ray engine's workers (:mod:`cascade.tables.ray_engine`) call the same functions: rows go through one gate
contract and the same per-row error handling."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cascade import contract
from cascade.errors import ConfigError
from cascade.tables.cells import check_embedding_column, check_text_column, embedding_cells, text_cells
from cascade.tables.chunk_store import ChunkStore, input_identity
from cascade.tables.job import (
    CONFIDENCE_COLUMN,
    DEGRADED_COLUMN,
    ERROR_COLUMN,
    LABEL_COLUMN,
    ON_DEGRADED_RETRY,
    RESULT_COLUMNS,
    TIER_COLUMN,
    Counts,
    FilterOptions,
    OpenedJob,
    reachable_tiers,
)
from cascade.tables.row_requests import Retry, first_contact, request_deadline_s, send_rows
from cascade.tables.table_io import check_output, table_schema


@dataclass(frozen=True)
class FilterPlan:
    """What a filter job settled before sending any row; plain data, so a Ray worker gets a copy."""

    options: FilterOptions
    gate: object  # cascade.gate.config.GateConfig
    labels: tuple[str, ...]
    emb_column: str | None
    served: tuple[str, int] | None
    tiers_reached: tuple[int, ...]
    #: Precomputed embeddings and a max tier that keeps rows on the embedding tiers: no text is sent.
    text_free: bool
    backoff_s: tuple[float, ...]

    @property
    def text_column(self) -> str:
        return self.options.text_column

    async def run(self, client, limit, retry: Retry, url: str, chunk: pa.Table):
        return await classify_chunk(self, client, limit, retry, url, chunk)


def check_filter_schema(schema: pa.Schema, source, options: FilterOptions) -> str | None:
    """The checks on the table's columns that need no server; the embedding column the job will use, if any."""
    check_text_column(schema, options.text_column, source)
    emb_column = options.embedding_column if options.embedding_column in schema.names else None
    taken = [options.col(c) for c in RESULT_COLUMNS if options.col(c) in schema.names]
    if taken:
        raise ConfigError(
            f"table {source} already has column(s) {taken}, which the filter job writes: "
            "name the results differently with --prefix (e.g. --prefix ai_)"
        )
    return emb_column


def plan_filter(
    schema: pa.Schema, source, options: FilterOptions, urls: list[str], backoff_s: tuple[float, ...]
) -> tuple[FilterPlan, dict]:
    """Check the job's arguments against the table's schema and every server (each contacted with the first-contact
    backoff), before any row is sent; the plan, and each server's model statistics at the start (by URL)."""
    from cascade.gate.config import GateConfig
    from cascade_client import CascadeClient

    options.check()
    emb_column = check_filter_schema(schema, source, options)
    gate = served = None
    before: dict[str, dict] = {}
    for url in urls:
        with CascadeClient(url) as sync_client:
            this = first_contact(lambda c=sync_client: c.task_info(options.task), url, backoff_s)
            this = GateConfig.from_parameters(this.parameters)
            if gate is None and options.where is not None and options.where not in this.labels:
                raise ConfigError(
                    f"--where {options.where!r} is not a label of task {options.task} ({list(this.labels)})"
                )
            before[url] = sync_client.model_stats()
            this_served = sync_client.embedder() if emb_column else None
        if gate is not None and (this.labels != gate.labels or this_served != served):
            raise ConfigError(
                f"the servers disagree on task {options.task}: {urls[0]} has labels {list(gate.labels)} "
                f"(embedder {served}), {url} has {list(this.labels)} (embedder {this_served})"
            )
        gate, served = this, this_served
    if emb_column:
        check_embedding_column(schema, emb_column, source, served)
    tiers = tuple(reachable_tiers(gate, options))  # a bad tier name fails here, before any row is sent
    text_free = emb_column is not None and all(t in contract.EMBEDDING_TIERS for t in tiers)
    plan = FilterPlan(options, gate, tuple(gate.labels), emb_column, served, tiers, text_free, tuple(backoff_s))
    return plan, before


def filter_manifest(plan: FilterPlan, input_identity: dict) -> dict:
    """The manifest of a filter job's committed chunks: its input and arguments; not the engine, nor how rows are
    sent (requests, in flight), so that either engine resumes the other's job."""
    from dataclasses import asdict

    options = asdict(plan.options)
    return {
        "job": "filter",
        "input": input_identity,
        "options": {k: v for k, v in options.items() if k not in ("in_flight", "batch_rows")},
        "labels": list(plan.labels),
    }


async def classify_chunk(
    plan: FilterPlan, client, limit: asyncio.Semaphore, retry: Retry, url: str, chunk: pa.Table
) -> tuple[pa.Table, Counts]:
    """``chunk`` through the task's gate (``client``: an AsyncCascadeClient; at most ``limit`` requests in flight);
    the chunk with the result columns, and what it counted."""
    options, emb_column, served = plan.options, plan.emb_column, plan.served
    counts = Counts(rows=chunk.num_rows)
    n = chunk.num_rows
    if emb_column:
        emb, has, errors = embedding_cells(chunk.column(emb_column), served[1] if served else None)
    else:
        emb, has, errors = None, np.zeros(n, bool), [None] * n
    # Rows sent with an embedding and no text need no usable text; the others do.
    needs_text = ~has if plan.text_free else np.ones(n, bool)
    texts = None
    if needs_text.any():
        texts, text_errors = text_cells(chunk.column(options.text_column))
        for i in np.flatnonzero(needs_text):
            errors[i] = errors[i] or text_errors[i]
    ok = np.array([e is None for e in errors], bool)
    probs = np.zeros((n, len(plan.labels)), np.float32)
    tiers = np.full(n, -1, np.int32)
    degraded = np.zeros(n, bool)

    def caller(with_embedding: bool):
        async def call(rows: np.ndarray):
            deadline = request_deadline_s(plan.gate, rows.size, list(plan.tiers_reached), embed=not with_embedding)

            def once():
                return client.classify_arrays(
                    options.task,
                    None if with_embedding and plan.text_free else texts[rows],
                    _take(emb, rows) if with_embedding else None,
                    max_tier=options.max_tier,
                    min_tier=options.min_tier,
                    timeout_s=deadline,
                )

            count = partial(counts.add_retried, int(rows.size))
            return await retry.call(once, f"task {options.task} at {url}", first_retry=count)

        return call

    attempts = 1 + (options.degraded_retries if options.on_degraded == ON_DEGRADED_RETRY else 0)
    todo = ok
    backoff_s = plan.backoff_s
    for attempt in range(attempts):
        if attempt:  # best-effort rows again, after a pause: the slow tier may have caught up
            await asyncio.sleep(backoff_s[min(attempt - 1, len(backoff_s) - 1)] if backoff_s else 0)
            counts.degraded_retried += int(todo.sum())
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
    label = np.where(answered, np.array(plan.labels, dtype=object)[probs.argmax(axis=1)], None)
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
    counts.error_rows = int((~answered).sum())
    counts.degraded_rows = int((degraded & answered).sum())
    for item in pc.value_counts(pa.array(tiers[answered], pa.int32())).to_pylist():
        counts.tiers[int(item["values"])] = int(item["counts"])
    return result_table, counts


def _take(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]``, as a view (no copy) when the rows are a contiguous run, as they usually are."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        return values[rows[0] : rows[-1] + 1]
    return values[rows]


def open_filter(
    table, out, options: FilterOptions, urls: list[str], backoff_s: tuple[float, ...], restart: bool,
    metrics_url: str | None = None, llm_prices: dict | None = None,
) -> OpenedJob:  # fmt: skip
    """A filter job's checks (arguments, output, table schema, every server) and its chunk store, for either engine;
    the LLM tiers' counters at the start, from ``metrics_url`` (default: beside the first server on Triton's ports)."""
    from cascade.llm.cost_report import metrics_url_for, scrape

    options.check()
    table, out = Path(table), Path(out)
    check_output(out, table)
    schema, total = table_schema(table, options.text_column)
    plan, before = plan_filter(schema, table, options, urls, backoff_s)
    store = ChunkStore(out, filter_manifest(plan, input_identity(table)), restart)
    metrics_url = metrics_url or metrics_url_for(urls[0])
    return OpenedJob(
        table, out, total, plan, store, len(store.done()), before, metrics_url, scrape(metrics_url), llm_prices
    )
