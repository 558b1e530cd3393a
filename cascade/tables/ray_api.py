"""The Python API of the Ray engine: :func:`classify_dataset`, the filter job's columns added to a Ray Dataset."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from cascade.errors import ConfigError
from cascade.tables.filter_chunk import plan_filter
from cascade.tables.job import DEFAULT_BATCH_ROWS, DEFAULT_IN_FLIGHT, EMBEDDING_COLUMN, FilterOptions
from cascade.tables.ray_worker import BatchClassifier, UrlCounter, split_urls
from cascade.tables.row_requests import DEFAULT_BACKOFF_S

#: Rows per batch a worker takes from the dataset (sent in requests of ``request_rows``, ``in_flight`` at a time).
DEFAULT_DATASET_BATCH_ROWS = 4 * DEFAULT_BATCH_ROWS


def classify_dataset(
    ds,
    task: str,
    urls: str | Sequence[str],
    *,
    text_column: str = "text",
    embedding_column: str | None = EMBEDDING_COLUMN,
    max_tier: str | int | None = None,
    min_tier: str | int | None = None,
    prefix: str = "",
    concurrency: int | None = None,
    batch_rows: int = DEFAULT_DATASET_BATCH_ROWS,
    request_rows: int = DEFAULT_BATCH_ROWS,
    in_flight: int = DEFAULT_IN_FLIGHT,
    on_degraded: str = "keep",
    degraded_retries: int = 2,
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S,
):
    """``ds`` (a ``ray.data.Dataset``) with the filter job's columns added to every row: ``label``, ``confidence``,
    ``tier``, ``degraded``, ``error`` (``prefix`` before each). Lazy, like any Dataset transform.

    The same checks before any row is sent as ``cascade filter`` (text column, result columns already taken, the
    embedding column's width against the servers' embedder, every server reached with the first-contact backoff),
    and the same per-batch work (:func:`cascade.tables.filter_chunk.classify_chunk`): rows with an ``embedding_column``
    value are sent as EMBEDDING, bad cells get a per-row ``error``. ``concurrency`` workers (default: 2 per URL), each
    sending to one of ``urls`` (round-robin; failing over to the next when its server stays unreachable), with at most
    ``in_flight`` requests of ``request_rows`` rows each. Rows come out in the order Ray Data gives them (set
    ``DataContext.get_current().execution_options.preserve_order = True`` for the input order); the embedding column
    is kept. A batch no server answers fails the dataset's execution with the error."""
    import ray
    import ray.data

    from cascade.tables.ray_engine import WORKER_CPUS, workers

    urls = split_urls(urls)
    concurrency = workers(concurrency, urls)
    if batch_rows < 1:
        raise ConfigError(f"batch_rows must be 1 or more, not {batch_rows}")
    options = FilterOptions(
        task=task, text_column=text_column, embedding_column=embedding_column, max_tier=max_tier, min_tier=min_tier,
        batch_rows=request_rows, in_flight=in_flight, keep_embedding=True, on_degraded=on_degraded,
        degraded_retries=degraded_retries, prefix=prefix,
    )  # fmt: skip
    schema = ds.schema()
    arrow = getattr(schema, "base_schema", schema)
    if not isinstance(arrow, pa.Schema):
        raise ConfigError(f"the dataset's schema is not an Arrow schema ({type(arrow).__name__}): use Arrow blocks")
    plan, _ = plan_filter(arrow, "(Ray Dataset)", options, urls, backoff_s)
    counter = ray.remote(num_cpus=0)(UrlCounter).remote()
    kwargs = {"plan": plan, "urls": urls, "counter": counter, "in_flight": in_flight, "backoff_s": tuple(backoff_s)}
    return ds.map_batches(
        BatchClassifier,
        fn_constructor_kwargs=kwargs,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        batch_size=batch_rows,
        batch_format="pyarrow",
        num_cpus=WORKER_CPUS,
    )
