"""The user's table as ``cascade label`` reads it: the rows that have text (:func:`read_table`), and a uniform
sample of their positions (:func:`sample_rows`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cascade.errors import ConfigError, InvalidInput


@dataclass(frozen=True)
class Table:
    """The rows of a table that have text, read by the table jobs' reader (:mod:`cascade.tables.local`): a null
    or empty text cell is no row here (it is never sent to the teacher); ``skipped`` counts them by reason."""

    path: Path
    ids: list[str]  # row ids: the id column's values, or row positions in the file
    texts: list[str]
    frame: object = field(repr=False)  # the pyarrow Table of these rows (for label columns)
    skipped: dict[str, int] = field(default_factory=dict)  # rows without text: "text is null"/"text is empty" -> n

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def skipped_rows(self) -> int:
        return sum(self.skipped.values())


def read_table(path: str | Path, text_column: str = "text", id_column: str | None = None) -> Table:
    """A CSV (or gzipped CSV), Parquet or Arrow IPC table; a missing file or column is a :class:`ConfigError`
    naming what exists. Rows whose text is null, blank or not UTF-8 are left out and counted
    (:attr:`Table.skipped`); ids stay the id column's values or the row positions in the file."""
    import pyarrow as pa

    from cascade.tables.cells import text_cells
    from cascade.tables.table_io import read_batches, table_schema

    path = Path(path)
    schema, _ = table_schema(path, text_column)  # a missing file or an unknown format fails here
    for column in (text_column, id_column):
        if column is not None and column not in schema.names:
            raise ConfigError(f"table {path}: no column {column!r} (columns: {schema.names})")
    # Every CSV column is text, as the user wrote it (pandas' keep_default_na=False): an id "007" stays "007", a
    # label column is read as written, and no column's type is guessed from its first block alone.
    batches = list(read_batches(path, text_column, strings=schema.names))
    frame = pa.Table.from_batches(batches) if batches else schema.empty_table()
    raw, errors = text_cells(frame.column(text_column))
    if id_column:
        values = frame.column(id_column).to_pylist()
        if None in values:
            raise ConfigError(f"table {path}: column {id_column!r} has {values.count(None)} null id(s)")
        ids = [str(v) for v in values]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"table {path}: column {id_column!r} has duplicate ids")
    else:
        ids = [str(i) for i in range(frame.num_rows)]
    keep = [i for i, e in enumerate(errors) if e is None]
    skipped: dict[str, int] = {}
    for e in errors:
        if e is not None:
            reason = "text is not valid UTF-8" if e.startswith("text is not valid UTF-8") else e
            skipped[reason] = skipped.get(reason, 0) + 1
    if len(keep) < frame.num_rows:
        frame = frame.take(pa.array(keep, pa.int64()))
    return Table(path, [ids[i] for i in keep], [raw[i].decode("utf-8") for i in keep], frame, skipped)


def sample_rows(n_rows: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` row positions drawn uniformly without replacement (no labels yet: no stratification): the first ``n`` of
    one seeded permutation, so that a larger budget with the same seed labels a superset and the label cache answers
    the rows a smaller one labelled."""
    if n <= 0:
        raise InvalidInput(f"sample size must be positive, got {n}")
    if n > n_rows:
        raise ConfigError(f"the table has {n_rows} rows, fewer than the sample size {n}")
    return np.sort(np.random.default_rng(seed).permutation(n_rows)[:n])


def held_out_rows(n_rows: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` row positions no sample of :func:`sample_rows` with the same seed takes while its size is at most
    ``n_rows - n``: the last ``n`` of the same permutation. Rows to report on, never to choose on."""
    if n <= 0 or n >= n_rows:
        raise InvalidInput(f"held-out rows must be between 1 and {n_rows - 1}, got {n}")
    return np.sort(np.random.default_rng(seed).permutation(n_rows)[-n:])
