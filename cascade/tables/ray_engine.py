"""The Ray engine of the table jobs (``cascade filter|embed --engine ray``): the driver.

It checks the job exactly as the local engine does (the same functions: :func:`plan_filter`, :func:`plan_embed`),
opens the same :class:`ChunkStore` with the same manifest (the engine is not in it: a job begun by one engine is
resumed by the other), and sends the chunk numbers not yet committed through ``map_batches(ChunkWorker)`` as a Ray
Dataset, one chunk per batch, ``concurrency`` workers. The workers read their own rows from the input file and commit
their chunks; the driver never holds the table. It reads the workers' counts as they stream in (progress bar,
totals), then merges the parts exactly as the local engine (:func:`finish_filter`, :func:`finish_embed`).

Exactly once: a chunk is committed by a rename to its deterministic name, so a chunk done twice (a retried Ray task)
is the same file, and a chunk cut short (Ctrl-C, a dead worker) is not there and is done by the rerun.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from cascade import errors
from cascade.errors import CascadeError, ConfigError
from cascade.tables.chunk_store import ChunkStore
from cascade.tables.embed_chunk import EMBED_BATCH_ROWS, open_embed
from cascade.tables.embed_jobs import finish_embed
from cascade.tables.filter_chunk import open_filter
from cascade.tables.filter_summary import finish_filter
from cascade.tables.job import EMBEDDING_COLUMN, Counts, FilterOptions, JobSummary, job_progress
from cascade.tables.ray_worker import ChunkWorker, UrlCounter, split_urls
from cascade.tables.row_requests import DEFAULT_BACKOFF_S
from cascade.tables.table_io import read_batches

#: Workers per server when ``--concurrency`` is not given; CPUs each worker asks Ray for.
DEFAULT_WORKERS_PER_URL = 2
WORKER_CPUS = 1
#: Set before Ray is imported: no usage report (no network here, nor in most clusters' pods).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


def _import_ray():
    for name, value in RAY_ENV.items():
        os.environ.setdefault(name, value)
    import ray

    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """Join the Ray cluster at ``address`` (``auto``, ``ray://host:10001``), else start a local Ray with ``num_cpus``
    logical CPUs; nothing when this process is already connected. Ray Data's progress bars and info logs are off
    (the job has its own progress bar). The caller shuts Ray down (``ray.shutdown()``); :func:`ray_session` does."""
    _import_ray()
    import ray
    import ray.data

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(
                num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                logging_level=logging.WARNING,
            )  # fmt: skip
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": on purpose
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator:
    """:func:`init_ray` for a ``with`` block, and ``ray.shutdown()`` when it ends (an error or Ctrl-C included) if the
    block connected this process: a local Ray it started is stopped with its workers. A process already connected
    (a notebook's, a test session's) stays connected."""
    ray = _import_ray()
    connected = ray.is_initialized()
    init_ray(address, num_cpus)
    try:
        yield ray
    finally:
        if not connected:
            ray.shutdown()


def workers(concurrency: int | None, urls: Sequence[str]) -> int:
    if concurrency is None:
        return DEFAULT_WORKERS_PER_URL * len(urls)
    if concurrency < 1:
        raise ConfigError(f"--concurrency must be 1 or more, not {concurrency}")
    return concurrency


def require_ray() -> None:
    """A clear error when Ray is not installed (before any work begins)."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("--engine ray needs Ray: pip install 'triton-cascade[ray]' (or `make setup`)")


def _count_rows(table: Path, total: int | None, text_column: str) -> int:
    """The table's rows; a CSV is not counted ahead, so it is read once (one column) to count them."""
    if total is not None:
        return total
    return sum(batch.num_rows for batch in read_batches(table, text_column, [text_column]))


def dispatch(
    work, table: Path, total: int, chunk_rows: int, store: ChunkStore, urls: Sequence[str], concurrency: int,
    in_flight: int, backoff_s: Sequence[float], progress,
) -> tuple[Counts, int]:  # fmt: skip
    """Every chunk not yet committed through ``concurrency`` ChunkWorkers; the totals and the rows skipped (committed
    before). The first chunk a worker could not do stops the job with its error (the committed chunks stay)."""
    import ray
    import ray.data

    done = store.done()
    n_chunks = -(-total // chunk_rows)
    pending = [k for k in range(n_chunks) if k not in done]
    skipped = sum(min(chunk_rows, total - k * chunk_rows) for k in done if k < n_chunks)
    progress.update(skipped)
    totals = Counts()
    if not pending:
        return totals, skipped
    counter = ray.remote(num_cpus=0)(UrlCounter).remote()
    kwargs = {
        "work": work, "table": str(table), "total": total, "chunk_rows": chunk_rows, "out": str(store.out),
        "manifest": store.manifest, "urls": list(urls), "counter": counter, "in_flight": in_flight,
        "backoff_s": tuple(backoff_s),
    }  # fmt: skip
    chunks = ray.data.from_items([{"chunk": k} for k in pending], override_num_blocks=len(pending))
    results = chunks.map_batches(
        ChunkWorker,
        fn_constructor_kwargs=kwargs,
        compute=ray.data.ActorPoolStrategy(size=min(concurrency, len(pending))),
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=WORKER_CPUS,
    )
    failure = None
    batches = iter(results.iter_batches(batch_size=None, batch_format="pyarrow"))
    try:
        for batch in batches:
            for row in batch.to_pylist():
                if row["error"] is not None:
                    failure = row
                    break
                totals.add(Counts.from_row(row))
                progress.update(row["rows"])
            if failure is not None:
                break
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops the execution; Ray Data drops its references to the workers
        _end_workers(ray, counter)
    if failure is not None:
        kind = getattr(errors, failure["error_kind"] or "", None)
        kind = kind if isinstance(kind, type) and issubclass(kind, CascadeError) else CascadeError
        raise kind(
            f"{failure['error']}. Progress kept: {len(store.done())} chunk(s) committed in {store.dir}; "
            "rerun the same command to resume"
        )
    return totals, skipped


def _end_workers(ray, counter) -> None:
    """Kill the job's workers (each gave the counter its handle) and the counter: no worker outlives its job, nor is
    it restarted, whatever Ray Data's references to it do."""
    try:
        handles = ray.get(counter.workers.remote(), timeout=60)
    except Exception:  # noqa: BLE001 - a counter that is gone holds no worker either
        handles = []
    for handle in (*handles, counter):
        with contextlib.suppress(Exception):  # one already dead
            ray.kill(handle, no_restart=True)


def run_filter_ray(
    table: Path,
    out: Path,
    options: FilterOptions,
    urls: str | Sequence[str],
    *,
    address: str | None = None,
    concurrency: int | None = None,
    restart: bool = False,
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S,
    llm_probe_rows: int = 8,
    quiet: bool = False,
    metrics_url: str | None = None,
    llm_prices: dict | None = None,
) -> JobSummary:
    """``cascade filter --engine ray``: :func:`cascade.tables.local.run_filter`'s job (same checks, output, resume)
    with its chunks spread over Ray workers, each sending to one of ``urls`` (round-robin, failing over)."""
    urls = split_urls(urls)
    concurrency = workers(concurrency, urls)
    job = open_filter(table, out, options, urls, backoff_s, restart, metrics_url, llm_prices)
    total = _count_rows(job.table, job.total, options.text_column)
    with ray_session(address, num_cpus=max(os.cpu_count() or 1, concurrency + 1)):
        start, cpu = time.perf_counter(), time.process_time()
        progress = job_progress(total, 0, f"filter {options.task} (ray)", quiet)
        try:
            totals, skipped = dispatch(
                job.plan, job.table, total, options.chunk_rows, job.store, urls, concurrency, options.in_flight,
                backoff_s, progress,
            )  # fmt: skip
        finally:
            progress.close()
        wall = time.perf_counter() - start
    return finish_filter(
        job, options, wall, skipped, totals, engine="ray", client_cpu_s=time.process_time() - cpu + totals.cpu_s,
        urls=urls, llm_probe_rows=llm_probe_rows,
    )  # fmt: skip


def run_embed_ray(
    table: Path,
    out: Path,
    urls: str | Sequence[str],
    *,
    text_column: str = "text",
    column: str = EMBEDDING_COLUMN,
    float16: bool = False,
    chunk_rows: int = 8192,
    batch_rows: int = EMBED_BATCH_ROWS,
    in_flight: int = 2,
    address: str | None = None,
    concurrency: int | None = None,
    restart: bool = False,
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S,
    quiet: bool = False,
) -> JobSummary:
    """``cascade embed --engine ray``: :func:`cascade.tables.embed_jobs.run_embed`'s job on Ray workers."""
    urls = split_urls(urls)
    concurrency = workers(concurrency, urls)
    job = open_embed(
        table, out, urls, text_column=text_column, column=column, float16=float16, chunk_rows=chunk_rows,
        batch_rows=batch_rows, backoff_s=backoff_s, restart=restart,
    )  # fmt: skip
    total = _count_rows(job.table, job.total, text_column)
    with ray_session(address, num_cpus=max(os.cpu_count() or 1, concurrency + 1)):
        start, cpu = time.perf_counter(), time.process_time()
        progress = job_progress(total, 0, "embed (ray)", quiet)
        try:
            totals, skipped = dispatch(
                job.plan, job.table, total, chunk_rows, job.store, urls, concurrency, in_flight, backoff_s, progress
            )
        finally:
            progress.close()
        wall = time.perf_counter() - start
    return finish_embed(job, wall, skipped, totals, engine="ray", client_cpu_s=time.process_time() - cpu + totals.cpu_s)
