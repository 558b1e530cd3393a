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
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cascade import contract, embedders
from cascade.arrays import all_finite
from cascade.errors import ConfigError, InvalidInput, RowsUnanswered, ServerError, ServerUnavailable

#: Columns a filter job adds to each row.
LABEL_COLUMN, CONFIDENCE_COLUMN, TIER_COLUMN, ERROR_COLUMN = "label", "confidence", "tier", "error"
#: True where the row's answer is best-effort (the tier meant to answer it failed or was too slow).
DEGRADED_COLUMN = "degraded"
RESULT_COLUMNS = (LABEL_COLUMN, CONFIDENCE_COLUMN, TIER_COLUMN, DEGRADED_COLUMN, ERROR_COLUMN)
#: What the filter job does with best-effort rows: keep their answer, or send them again (then keep it).
ON_DEGRADED_KEEP, ON_DEGRADED_RETRY = "keep", "retry"
#: The column ``cascade embed`` writes and ``cascade filter`` sends as EMBEDDING when present.
EMBEDDING_COLUMN = "embedding"
DEFAULT_CHUNK_ROWS = 65_536
DEFAULT_BATCH_ROWS = contract.GATE_MAX_BATCH_SIZE
#: The client's deadline for a request that needs little time, and the margin over the gate's own allowance.
DEFAULT_CLIENT_TIMEOUT_S, DEADLINE_MARGIN_S = 120.0, 30.0
EMBED_BATCH_ROWS = 256
DEFAULT_IN_FLIGHT = 4
#: Seconds to wait before each retry of a request the server did not answer.
DEFAULT_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
PARTS_SUFFIX = ".parts"
MANIFEST = "manifest.json"
TEXT_TYPES = (pa.string(), pa.large_string(), pa.binary(), pa.large_binary())


# ----------------------------------------------------------------------------------------------- reading
#: Table formats by file suffix. Arrow IPC (``.arrow``, ``.feather``) is read memory-mapped with no decoding:
#: the fastest input for the precomputed-embedding job (Parquet decodes a list column value by value).
#: ``.csv.gz`` is gzipped CSV (the shipped datasets in ``data/`` are), decompressed and compressed on the fly.
FORMATS = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
}


def table_format(path: Path) -> str:
    name = Path(path).name.lower()
    suffix = ".csv.gz" if name.endswith(".csv.gz") else Path(path).suffix.lower()
    kind = FORMATS.get(suffix)
    if kind is None:
        raise ConfigError(f"{path}: unsupported format {Path(path).suffix!r} (use {', '.join(FORMATS)})")
    return kind


def _check_table_path(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"table {path} not found")
    return table_format(path)


def table_schema(path: Path, text_column: str | None = None) -> tuple[pa.Schema, int | None]:
    """The table's schema and row count (``None`` for CSV, which is not counted ahead)."""
    kind = _check_table_path(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path)
        return meta.schema_arrow, meta.metadata.num_rows
    if kind == "arrow":
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        return reader.schema, sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    import pyarrow.csv as pcsv

    reader = pcsv.open_csv(path, parse_options=_csv_parse(), convert_options=_csv_convert(text_column))
    return reader.schema, None


def _csv_convert(text_column: str | None, strings: Sequence[str] = ()):
    import pyarrow.csv as pcsv

    # The text column is text whatever it holds (a review "10/10" must not become a number).
    names = ([text_column] if text_column else []) + list(strings)
    return pcsv.ConvertOptions(column_types={name: pa.string() for name in names})


def _csv_parse():
    import pyarrow.csv as pcsv

    # A quoted text may hold line breaks (a review in paragraphs); without this a block boundary inside one fails.
    return pcsv.ParseOptions(newlines_in_values=True)


def read_batches(
    path: Path, text_column: str | None = None, columns: list[str] | None = None, *, strings: Sequence[str] = ()
):
    """Record batches of the table, in order. CSV (plain or ``.csv.gz``): the text column and the ``strings``
    columns are read as text (empty cells as ``""``), the others as pyarrow infers them."""
    kind = _check_table_path(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        yield from pq.ParquetFile(path).iter_batches(batch_size=DEFAULT_CHUNK_ROWS, columns=columns)
        return
    if kind == "arrow":
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            yield batch.select(columns) if columns else batch
        return
    import pyarrow.csv as pcsv

    reader = pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(block_size=1 << 24),
        parse_options=_csv_parse(),
        convert_options=_csv_convert(text_column, strings),
    )
    for batch in reader:
        yield batch.select(columns) if columns else batch


def chunks(batches, chunk_rows: int) -> Iterator[tuple[int, pa.Table]]:
    """``(k, table)`` with exactly ``chunk_rows`` rows each (the last may be shorter), whatever the batching."""
    pieces, have, k = [], 0, 0
    for batch in batches:
        while batch.num_rows:
            take = min(chunk_rows - have, batch.num_rows)
            pieces.append(batch.slice(0, take))
            have += take
            batch = batch.slice(take)
            if have == chunk_rows:
                yield k, pa.Table.from_batches(pieces)
                pieces, have, k = [], 0, k + 1
    if have:
        yield k, pa.Table.from_batches(pieces)


# ----------------------------------------------------------------------------------------- cell checks
def check_text_column(schema: pa.Schema, column: str, path: Path) -> None:
    if column not in schema.names:
        raise ConfigError(f"table {path}: no text column {column!r} (columns: {schema.names})")
    kind = schema.field(column).type
    if kind not in TEXT_TYPES and not pa.types.is_null(kind):
        raise ConfigError(f"table {path}: column {column!r} holds {kind}, not text")


def check_embedding_column(schema: pa.Schema, column: str, path: Path, served: tuple[str, int] | None = None) -> None:
    """An embedding column: lists of floats; with ``served`` (the server's embedder's name and width), of that
    width and, where the column records its embedder (``cascade embed`` does), made by that embedder."""
    field = schema.field(column)
    kind = field.type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        raise ConfigError(f"table {path}: column {column!r} holds {kind}, not a list of floats (an embedding)")
    if not pa.types.is_floating(kind.value_type):
        raise ConfigError(f"table {path}: embedding column {column!r} holds lists of {kind.value_type}, not floats")
    if served is None:
        return
    name, dim = served
    made_by = (field.metadata or {}).get(embedders.TABLE_METADATA_KEY, b"").decode() or None
    if (made_by and made_by != name) or (pa.types.is_fixed_size_list(kind) and kind.list_size != dim):
        raise ConfigError(
            f"table {path}: embedding column {column!r} was made by "
            f"{made_by or 'another embedder'} ({kind.list_size if pa.types.is_fixed_size_list(kind) else '?'}-d); "
            f"the server's embedder is {name} ({dim}-d): embed the table again with `cascade embed`"
        )


def text_cells(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str | None]]:
    """UTF-8 bytes per row, and why a row is unusable (null, blank, not UTF-8)."""
    array = _one_array(column)
    n = len(array)
    errors: list[str | None] = [None] * n
    if pa.types.is_null(array.type):
        return np.full(n, None, dtype=np.object_), ["text is null"] * n
    if pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        raw = array.to_numpy(zero_copy_only=False)
        decoded = []
        for i, value in enumerate(raw):
            try:
                decoded.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError as exc:
                errors[i] = f"text is not valid UTF-8 ({exc.reason} at byte {exc.start})"
                decoded.append(None)
        strings = pa.array(decoded, pa.string())
    else:
        strings = array = pc.cast(array, pa.string())
    blank = np.asarray(pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(strings)), 0), False))
    nulls = np.asarray(array.is_null())
    for i in np.flatnonzero(nulls | blank):
        errors[i] = "text is null" if nulls[i] else "text is empty"
    texts = pc.cast(array, pa.binary()).to_numpy(zero_copy_only=False)
    return texts, errors


def _one_array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One array for a column; ``combine_chunks`` copies even a single chunk, so that case is taken as is."""
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


def embedding_cells(
    column: pa.ChunkedArray | pa.Array, dim: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """``(embeddings [n, dim] float32, has [n], errors)``: a null row has none (the server embeds its text);
    a row of the wrong length or with NaN/Inf is an error. No copy when the column is float32 without nulls.
    ``dim``: the served embedder's width (default: the column's fixed size, else the default embedder's)."""
    array = _one_array(column)
    if dim is None:
        dim = array.type.list_size if pa.types.is_fixed_size_list(array.type) else contract.EMBEDDING_DIM
    n = len(array)
    errors: list[str | None] = [None] * n
    has = np.ones(n, bool) if array.null_count == 0 else ~np.asarray(array.is_null())
    good = has
    if not pa.types.is_fixed_size_list(array.type):
        lengths = np.asarray(pc.fill_null(pc.list_value_length(array), dim))
        good = has & (lengths == dim)
        for i in np.flatnonzero(has & (lengths != dim)):
            errors[i] = f"embedding has {int(lengths[i])} values, not {dim}"
    if good.all() and pa.types.is_fixed_size_list(array.type):  # no copy: the values under this slice
        values = array.values.slice(array.offset * dim, n * dim)
        out = values.to_numpy(zero_copy_only=False).reshape(n, dim)
    elif good.all():
        out = array.flatten().to_numpy(zero_copy_only=False).reshape(n, dim)
    else:
        out = np.zeros((n, dim), np.float32)
        if good.any():
            out[good] = array.filter(pa.array(good)).flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    out = out.astype(np.float32, copy=False)
    if not all_finite(out):
        finite = np.isfinite(out).all(axis=1)
        for i in np.flatnonzero(good & ~finite):
            errors[i] = "embedding holds NaN or Inf"
        good = good & finite
    return out, good, errors


# -------------------------------------------------------------------------------------- committed chunks
class ChunkStore:
    """``OUT.parts/``: the manifest of a job's arguments and one committed Parquet file per finished chunk."""

    def __init__(self, out: Path, manifest: dict, restart: bool = False) -> None:
        self.out = Path(out)
        self.dir = self.out.with_name(self.out.name + PARTS_SUFFIX)
        self.manifest = manifest
        path = self.dir / MANIFEST
        if restart and self.dir.exists():
            shutil.rmtree(self.dir)
        if path.is_file():
            previous = json.loads(path.read_text())
            if previous != manifest:
                changed = sorted(k for k in set(previous) | set(manifest) if previous.get(k) != manifest.get(k))
                raise ConfigError(
                    f"{self.dir} holds an unfinished job with other arguments ({', '.join(changed)} differ): "
                    "rerun with the same arguments to resume it, or pass --restart to start over"
                )
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True))

    def part(self, k: int) -> Path:
        return self.dir / f"part-{k:06d}.arrow"

    def done(self) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in self.dir.glob("part-*.arrow")}

    def commit(self, k: int, table: pa.Table) -> None:
        """Arrow IPC: no encoding on the way in, memory-mapped on the way out."""
        tmp = self.dir / f".part-{k:06d}.tmp"
        with pa.ipc.new_file(str(tmp), table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, self.part(k))

    def parts(self) -> list[Path]:
        return [self.part(k) for k in sorted(self.done())]

    @staticmethod
    def read(path: Path, columns: list[str] | None = None) -> pa.Table:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        return table.select(columns) if columns else table

    def merge(self, out: Path, keep=None) -> int:
        """All parts, in order, into ``out`` (``keep(table) -> mask`` filters rows); rows written.

        Parquet cannot store a null fixed-size list (pyarrow raises NotImplemented), so a fixed-size list
        column with null rows is written to Parquet as a variable-size list of the same values."""
        parts = self.parts()
        if not parts:
            raise ConfigError(f"the input table has no rows: nothing written to {out}")
        schema = pa.ipc.open_file(pa.memory_map(str(parts[0]))).schema
        if table_format(out) == "parquet":
            for i, f in enumerate(schema):
                if pa.types.is_fixed_size_list(f.type) and any(
                    self.read(p, [f.name]).column(0).null_count for p in parts
                ):
                    schema = schema.set(i, f.with_type(pa.list_(f.type.value_type)))  # keeps its metadata

        def tables():
            for path in parts:
                table = self.read(path)
                if keep is not None:
                    table = table.filter(keep(table))
                yield table.cast(schema)

        return write_table_atomic(tables(), schema, out)

    def remove(self) -> None:
        shutil.rmtree(self.dir)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _input_identity(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def write_table_atomic(tables, schema: pa.Schema, out: Path) -> int:
    """Write record batches/tables to ``out`` (CSV, gzipped CSV, Parquet or Arrow IPC by suffix) through a temporary
    file; rows written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    rows = 0
    kind = table_format(out)
    sink = None  # the gzip stream of a .csv.gz, closed after its writer
    if kind == "csv":
        import pyarrow.csv as pcsv

        if out.name.lower().endswith(".gz"):
            sink = pa.CompressedOutputStream(str(tmp), "gzip")
        writer = pcsv.CSVWriter(sink if sink is not None else tmp, schema)
    elif kind == "parquet":
        import pyarrow.parquet as pq

        writer = pq.ParquetWriter(tmp, schema)
    else:
        writer = pa.ipc.new_file(str(tmp), schema)
    try:
        for table in tables:
            writer.write_table(table)
            rows += table.num_rows
    finally:
        writer.close()
        if sink is not None:
            sink.close()
    os.replace(tmp, out)
    return rows


def _check_output(out: Path, table: Path) -> None:
    table_format(out)
    if out.resolve() == table.resolve():
        raise ConfigError(f"output {out} is the input table; choose another path")


# ------------------------------------------------------------------------------------------- requests
@dataclass
class Retry:
    """Backoff between retries of a request the server did not answer: ``backoff_s[i]`` seconds before retry
    ``i + 1``. The one retry loop of the table jobs: every request (:meth:`call`) and the first contact with the
    server (:func:`first_contact`)."""

    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S
    retried: int = 0

    async def call(self, fn, what: str, exhausted=None):
        """``await fn()``, tried again after each pause while it raises :class:`ServerUnavailable`. When the pauses
        are spent: the error ``exhausted(retries, exc)`` if given, else a :class:`ServerUnavailable` naming ``what``
        (a :class:`RowsUnanswered` as it is: the server is there, those rows get an error and the job goes on)."""
        for attempt in range(len(self.backoff_s) + 1):
            try:
                return await fn()
            except ServerUnavailable as exc:
                if attempt == len(self.backoff_s):
                    if exhausted is not None:
                        raise exhausted(attempt, exc) from exc
                    if isinstance(exc, RowsUnanswered):
                        raise
                    raise ServerUnavailable(
                        f"{what}: no answer after {attempt} retries over {sum(self.backoff_s):.0f} s ({exc})"
                    ) from exc
                self.retried += 1
                await asyncio.sleep(self.backoff_s[attempt])
        raise AssertionError("unreachable")


async def _isolate(call, rows: np.ndarray, errors: list[str | None], results: dict) -> None:
    """Send ``rows``; when the server refuses them as invalid, halve until the bad rows are found alone."""
    try:
        results[int(rows[0])] = (rows, await call(rows))
    except RowsUnanswered as exc:  # after the retries: no tier could score them; the job goes on
        for i in rows.tolist():
            errors[int(i)] = f"unanswered: {exc}"
    except InvalidInput as exc:
        if rows.size == 1:
            errors[int(rows[0])] = f"refused by the server: {exc}"
            return
        half = rows.size // 2
        await _isolate(call, rows[:half], errors, results)
        await _isolate(call, rows[half:], errors, results)


async def send_rows(
    call, rows: np.ndarray, batch_rows: int, errors: list[str | None], limit: asyncio.Semaphore
) -> dict[int, tuple[np.ndarray, object]]:
    """``call(row indices)`` for ``rows`` in requests of ``batch_rows``, at most ``limit`` in flight."""
    results: dict[int, tuple[np.ndarray, object]] = {}

    async def one(part: np.ndarray) -> None:
        async with limit:
            await _isolate(call, part, errors, results)

    await asyncio.gather(*(one(rows[i : i + batch_rows]) for i in range(0, rows.size, batch_rows)))
    return results


# ---------------------------------------------------------------------------------------------- filter
@dataclass(frozen=True)
class FilterOptions:
    task: str
    text_column: str = "text"
    embedding_column: str | None = EMBEDDING_COLUMN  # used when the table has it
    where: str | None = None
    max_tier: str | int | None = None
    min_tier: str | int | None = None
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    batch_rows: int = DEFAULT_BATCH_ROWS
    in_flight: int = DEFAULT_IN_FLIGHT
    keep_embedding: bool = False
    #: Best-effort rows (a slow or failed tier): keep their answer, or send them again up to ``degraded_retries``
    #: times (with the backoff of unanswered requests) and keep the last answer.
    on_degraded: str = ON_DEGRADED_KEEP
    degraded_retries: int = 2
    #: Put before the result columns' names (``label`` -> ``ai_label``) when the table has such columns.
    prefix: str = ""

    def col(self, name: str) -> str:
        return self.prefix + name

    def check(self) -> None:
        if self.chunk_rows < 1 or self.batch_rows < 1 or self.in_flight < 1:
            raise ConfigError("chunk rows, batch rows and in-flight requests must be positive")
        if self.batch_rows > contract.GATE_MAX_BATCH_SIZE:
            raise ConfigError(f"--batch-size {self.batch_rows} is over the gate's {contract.GATE_MAX_BATCH_SIZE}")
        if self.on_degraded not in (ON_DEGRADED_KEEP, ON_DEGRADED_RETRY):
            raise ConfigError(f"--on-degraded must be keep or retry, not {self.on_degraded!r}")
        if self.degraded_retries < 0:
            raise ConfigError("--degraded-retries must be 0 or more")


@dataclass
class JobSummary:
    job: str
    rows: int
    out: str
    wall_s: float
    rows_per_s: float
    resumed_chunks: int = 0
    error_rows: int = 0
    errors_file: str | None = None
    retries: int = 0
    #: Rows whose answer is best-effort (``degraded`` column), and rows sent again because they were.
    degraded_rows: int = 0
    degraded_retried: int = 0
    tiers: dict[str, int] = field(default_factory=dict)
    llm_share: float | None = None
    where: str | None = None
    matching_rows: int | None = None
    cost: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _progress(total: int | None, initial: int, what: str, quiet: bool):
    from cascade.progress import progress

    return progress(total, what, "rows", initial=initial, disable=quiet, unit_scale=True, smoothing=0.1)


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
    from cascade.client import AsyncCascadeClient, CascadeClient

    options.check()
    table, out = Path(table), Path(out)
    _check_output(out, table)
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
        "input": _input_identity(table),
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
    progress = _progress(total, 0, f"filter {options.task}", quiet)

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

    _run_job(main, store, progress)
    wall = time.perf_counter() - start
    summary = _finish_filter(store, out, options, len(done), wall, skipped_rows, retry.retried)
    summary.degraded_retried = degraded_retried
    with CascadeClient(url) as sync_client:
        summary.cost = _cost(sync_client, before, summary, options, labels, table, llm_probe_rows)
    return summary


def _take(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]``, as a view (no copy) when the rows are a contiguous run, as they usually are."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        return values[rows[0] : rows[-1] + 1]
    return values[rows]


def _run_job(main, store: ChunkStore, progress) -> None:
    """Run a job's event loop; a server error keeps the committed chunks and says how to resume."""
    try:
        asyncio.run(main())
    except ServerError as exc:
        raise type(exc)(
            f"{exc}. Progress kept: {len(store.done())} chunk(s) committed in {store.dir}; "
            "rerun the same command to resume"
        ) from exc
    finally:
        progress.close()


def reachable_tiers(gate, options: FilterOptions) -> list[int]:
    """The gate's tiers that the job's --min-tier/--max-tier let rows reach (a bad tier name fails here, before
    any row is sent)."""
    from cascade.gate import RequestOptions

    params = {}
    if options.max_tier is not None:
        params[contract.PARAM_MAX_TIER] = options.max_tier
    if options.min_tier is not None:
        params[contract.PARAM_MIN_TIER] = options.min_tier
    request = RequestOptions.parse(params, gate.tiers)
    return [t for t in gate.tiers if request.min_tier <= t <= request.max_tier]


def embedding_tiers_only(gate, options: FilterOptions) -> bool:
    return all(t in contract.EMBEDDING_TIERS for t in reachable_tiers(gate, options))


def request_deadline_s(gate, rows: int, tiers: list[int], embed: bool) -> float:
    """A request's client deadline: what the gate may take over it (``GateConfig.request_allowance_s``) and a
    margin, never less than the client's default. A request of 4,096 rows bound for the LLM takes minutes;
    a fixed deadline would fail it while the server is still answering."""
    return max(DEFAULT_CLIENT_TIMEOUT_S, gate.request_allowance_s(rows, tiers, embed) + DEADLINE_MARGIN_S)


def first_contact(fn, url: str, backoff_s: tuple[float, ...]):
    """``fn()``, a blocking call that opens a job (no event loop runs yet), retried by :class:`Retry` with the
    same backoff; when no server answers, a :class:`ServerUnavailable` that says to start one."""

    async def once():
        return fn()

    def exhausted(retries: int, exc: ServerUnavailable) -> ServerUnavailable:
        return ServerUnavailable(
            f"no server answers at {url} after {retries} retries (start one with `cascade serve`): {exc}"
        )

    return asyncio.run(Retry(backoff_s).call(once, url, exhausted))


def _finish_filter(
    store: ChunkStore, out: Path, options: FilterOptions, resumed: int, wall: float, skipped_rows: int, retries: int
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
        retries=retries,
        degraded_rows=degraded,
        tiers={contract.TIER_NAMES.get(t, str(t)): n for t, n in sorted(tier_counts.items())},
        llm_share=llm / answered if answered else None,
        where=options.where,
        matching_rows=matching if options.where is not None else None,
    )


def _cost(client, before: dict, summary: JobSummary, options, labels, table: Path, probe_rows: int) -> dict | None:
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


# ----------------------------------------------------------------------------------------------- embed
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

    from cascade.client import AsyncCascadeClient, CascadeClient

    table, out = Path(table), Path(out)
    _check_output(out, table)
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
        "input": _input_identity(table),
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
    progress = _progress(total, 0, "embed", quiet)
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

    _run_job(main, store, progress)
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
    if _check_table_path(source) == "csv":
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
