"""The Ray engine's workers (Ray actors, made by ``Dataset.map_batches``): each holds its own asyncio gRPC client to
one server and runs the same per-chunk work as the local engine (:mod:`cascade.tables.filter_chunk`,
:mod:`cascade.tables.embed_chunk`).

- :class:`ChunkWorker` (``cascade filter|embed --engine ray``): given chunk numbers, reads each chunk's rows from the
  input file (:func:`cascade.tables.table_io.read_rows_range`), does the chunk's work and commits it with
  :meth:`ChunkStore.commit` (a temporary name, then a rename to ``part-%06d.arrow``), and returns what it counted.
- :class:`BatchClassifier` (for :func:`~cascade.tables.ray_api.classify_dataset`): a Ray Dataset's batch in, the batch
  with the filter job's result columns out.

Which server: the workers take indices 0, 1, 2, ... from one :class:`UrlCounter` actor as they start, and worker ``i``
sends to ``urls[i % n]`` (round-robin). When that server stays unreachable through the retries (``Retry``), the
worker fails over to the next URL and does the chunk again (nothing of it was committed), before giving up.

Nothing here imports ``ray`` at module level: the module is importable without it (the counter's handle is passed in).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from cascade.errors import CascadeError, ConfigError, RowsUnanswered, ServerUnavailable
from cascade.tables.chunk_store import ChunkStore
from cascade.tables.job import NUMBERS
from cascade.tables.row_requests import Retry
from cascade.tables.table_io import read_rows_range

#: What a ChunkWorker returns per chunk (one row each): the chunk's :class:`Counts` as a row, the server that did it,
#: and ``error`` (with its kind) when the chunk could not be done.
RESULT_SCHEMA = pa.schema(
    [("chunk", pa.int64())]
    + [(name, pa.float64() if name == "cpu_s" else pa.int64()) for name in NUMBERS]
    + [("tiers", pa.string()), ("url", pa.string()), ("error", pa.string()), ("error_kind", pa.string())]
)


def split_urls(urls: str | Sequence[str]) -> list[str]:
    """``"host:port,host:port"`` (or a list of them) as a list; at least one."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out = [u.strip() for u in items if u and u.strip()]
    if not out:
        raise ConfigError("no server given: --url host:port[,host:port...]")
    return out


def worker_urls(urls: Sequence[str], index: int) -> list[str]:
    """The servers worker ``index`` tries, in order: ``urls[index % n]`` (round-robin over the workers), then the next
    ones (wrapping around), to fail over to."""
    first = index % len(urls)
    return list(urls[first:]) + list(urls[:first])


class UrlCounter:
    """Hands out the workers' indices, 0, 1, 2, ..., in the order they ask, and keeps the actor handles that workers
    give with their request, for the driver to end them with the job (:meth:`workers`); run as one Ray actor
    (``ray.remote(UrlCounter)``) whose handle every worker gets in its constructor arguments."""

    def __init__(self) -> None:
        self.n = 0
        self.handles: list = []

    def next(self, worker=None) -> int:
        if worker is not None:
            self.handles.append(worker)
        self.n += 1
        return self.n - 1

    def workers(self) -> list:
        return list(self.handles)


class Endpoint:
    """A worker's server: its client on the worker's own event loop, at most ``in_flight`` requests in flight, the
    retry loop, and the failover to the next URL."""

    def __init__(
        self, urls: Sequence[str], counter, in_flight: int, backoff_s: Sequence[float], register: bool = False
    ) -> None:
        index = 0
        if counter is not None:  # ``register``: this worker's actor handle goes with the request
            import ray

            me = ray.get_runtime_context().current_actor if register else None
            index = ray.get(counter.next.remote(me))
        self.index = index
        self.urls = worker_urls(urls, index)
        self.at = 0
        self.in_flight = in_flight
        self.retry = Retry(tuple(backoff_s))
        self.failovers = 0
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()  # one chunk at a time on the loop, whichever thread Ray calls from
        self._client = self._limit = None

    @property
    def url(self) -> str:
        return self.urls[self.at]

    def run(self, work, chunk: pa.Table):
        """``work.run(client, limit, retry, url, chunk)`` on the worker's loop; fails over when the server is gone."""
        with self._lock:
            return self._loop.run_until_complete(self._run(work, chunk))

    async def _run(self, work, chunk: pa.Table):
        from cascade_client import AsyncCascadeClient

        while True:
            if self._client is None:
                self._client = AsyncCascadeClient(self.url)
                self._limit = asyncio.Semaphore(self.in_flight)
            try:
                return await work.run(self._client, self._limit, self.retry, self.url, chunk)
            except ServerUnavailable as exc:
                if isinstance(exc, RowsUnanswered):
                    raise
                if self.at + 1 >= len(self.urls):
                    if len(self.urls) == 1:
                        raise
                    raise ServerUnavailable(f"{exc}; no server of {', '.join(self.urls)} answers") from exc
                old, self._client = self._client, None
                try:
                    await old.close()
                except Exception:  # noqa: BLE001 - a dead server's channel may fail to close: it is dropped anyway
                    pass
                self.at += 1
                self.failovers += 1


class ChunkWorker:
    """``map_batches`` worker of the table jobs: a batch of chunk numbers in, one row of counts per chunk out
    (:data:`RESULT_SCHEMA`); each chunk committed to ``OUT.parts/`` before its row is returned."""

    def __init__(
        self,
        work,
        table: str,
        total: int,
        chunk_rows: int,
        out: str,
        manifest: dict,
        urls: Sequence[str],
        counter,
        in_flight: int,
        backoff_s: Sequence[float],
    ) -> None:
        self.work, self.table, self.total, self.chunk_rows = work, Path(table), total, chunk_rows
        self.store = ChunkStore(Path(out), manifest)  # the driver wrote this manifest: checked, not rewritten
        self.endpoint = Endpoint(urls, counter, in_flight, backoff_s, register=True)  # ended with the job

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self.one(int(k)) for k in batch.column("chunk").to_pylist()]
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)

    def one(self, k: int) -> dict:
        start = k * self.chunk_rows
        retries, failovers, cpu = self.endpoint.retry.retried, self.endpoint.failovers, time.process_time()
        row = dict.fromkeys(RESULT_SCHEMA.names, 0) | {"chunk": k, "tiers": "{}", "error": None, "error_kind": None}
        row["cpu_s"] = 0.0
        try:
            chunk = read_rows_range(
                self.table, start, min(start + self.chunk_rows, self.total), text_column=self.work.text_column
            )
            result, counts = self.endpoint.run(self.work, chunk)
            self.store.commit(k, result)
        except CascadeError as exc:  # reported to the driver, which stops the job with it (a Ray error would
            # carry only the text)
            return row | {"url": self.endpoint.url, "error": str(exc), "error_kind": type(exc).__name__}
        counts.retries = self.endpoint.retry.retried - retries
        counts.failovers = self.endpoint.failovers - failovers
        counts.cpu_s = time.process_time() - cpu
        return row | counts.to_row() | {"url": self.endpoint.url}


class BatchClassifier:
    """``map_batches`` worker of :func:`cascade.tables.ray_api.classify_dataset`: a batch in, the batch with the filter
    job's result columns out (an error after the retries and the failover fails the dataset)."""

    def __init__(self, plan, urls: Sequence[str], counter, in_flight: int, backoff_s: Sequence[float]) -> None:
        self.plan = plan
        self.endpoint = Endpoint(urls, counter, in_flight, backoff_s)

    def __call__(self, batch: pa.Table) -> pa.Table:
        result, _ = self.endpoint.run(self.plan, batch)
        return result
