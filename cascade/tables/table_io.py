"""Reading and writing table files (CSV, gzipped CSV, Parquet, Arrow IPC): formats, schemas, record batches, a
job's fixed chunks of rows, and writes through a temporary file."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa

from cascade.errors import ConfigError

#: Rows per chunk of a job (and per record batch read from Parquet).
DEFAULT_CHUNK_ROWS = 65_536


#: Table formats by file suffix. Arrow IPC (``.arrow``, ``.feather``) is read memory-mapped with no decoding:
#: the fastest input for the precomputed-embedding job (Parquet decodes a list column value by value).
#: ``.csv.gz`` is gzipped CSV, decompressed and compressed on the fly.
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


def check_table_path(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"table {path} not found")
    return table_format(path)


def table_schema(path: Path, text_column: str | None = None) -> tuple[pa.Schema, int | None]:
    """The table's schema and row count (``None`` for CSV, which is not counted ahead)."""
    kind = check_table_path(path)
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
    kind = check_table_path(path)
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


def read_rows_range(
    path: Path, start: int, stop: int, columns: list[str] | None = None, text_column: str | None = None
) -> pa.Table:
    """Rows ``[start, stop)`` of the table, as :func:`chunks` over :func:`read_batches` would give them (the same
    schema and values), without reading the whole table: Parquet reads only the row groups that hold them (from its
    metadata), Arrow IPC slices its memory-mapped record batches, CSV is streamed from the top and the rows before
    ``start`` skipped (CSV has no index: prefer Parquet or Arrow IPC for a job cut into many chunks)."""
    kind = check_table_path(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        groups, offset, first = [], 0, None
        for i in range(parquet.metadata.num_row_groups):
            n = parquet.metadata.row_group(i).num_rows
            if offset < stop and offset + n > start:
                first = offset if first is None else first
                groups.append(i)
            offset += n
        if not groups:
            return _empty(_select(parquet.schema_arrow, columns))
        table = parquet.read_row_groups(groups, columns=columns)
        return _slice(table.to_batches(), start - first, stop - first, table.schema)
    if kind == "arrow":
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        return _slice(read_batches(path, text_column, columns), start, stop, _select(reader.schema, columns))
    batches = read_batches(path, text_column, columns)
    first_batch = next(batches, None)
    if first_batch is None:
        return _empty(_select(table_schema(path, text_column)[0], columns))
    return _slice(_prepend(first_batch, batches), start, stop, first_batch.schema)


def _slice(batches, start: int, stop: int, schema: pa.Schema) -> pa.Table:
    pieces, offset = [], 0
    for batch in batches:
        n = batch.num_rows
        lo, hi = max(start, offset), min(stop, offset + n)
        if lo < hi:
            pieces.append(batch.slice(lo - offset, hi - lo))
        offset += n
        if offset >= stop:
            break
    return pa.Table.from_batches(pieces, schema=schema) if pieces else _empty(schema)


def _select(schema: pa.Schema, columns: list[str] | None) -> pa.Schema:
    return pa.schema([schema.field(c) for c in columns], metadata=schema.metadata) if columns else schema


def _empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def _prepend(first, rest):
    yield first
    yield from rest


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


def check_output(out: Path, table: Path) -> None:
    table_format(out)
    if out.resolve() == table.resolve():
        raise ConfigError(f"output {out} is the input table; choose another path")
