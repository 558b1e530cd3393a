"""Dataset files: where a task's split lives (:class:`DatasetSpec`, :func:`dataset_file`) and its text and label
cells read from Parquet or CSV (:func:`read_rows`), by the table jobs' reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cascade.errors import ConfigError
from cascade.paths import DATA_DIR_ENV, data_dir


@dataclass(frozen=True)
class DatasetSpec:
    dir: str
    train: str
    validation: str
    test: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    label_encoding: str = "index"  # "index" or "name"

    def path(self, split: str, root: str | Path | None = None) -> Path:
        file = getattr(self, split, None)
        if not file:
            raise ConfigError(f"dataset has no {split!r} split")
        return dataset_file(data_dir(root) / self.dir / file)


#: The formats a dataset split may be stored in, in the order :func:`dataset_file` tries them (the repository
#: ships Parquet: data/README.md; CSV and gzipped CSV are read as well).
SPLIT_SUFFIXES = (".parquet", ".csv", ".csv.gz")


def dataset_file(path: Path) -> Path:
    """``path``, or where it is absent the same split beside it in another of :data:`SPLIT_SUFFIXES`: a task
    naming ``train.csv`` reads ``train.parquet`` (or ``train.csv.gz``), one naming ``train.parquet`` reads a
    ``--data-dir`` that holds ``train.csv``. A name with another suffix is returned as it is."""
    if path.exists():
        return path
    name = path.name.lower()
    suffix = max((s for s in SPLIT_SUFFIXES if name.endswith(s)), key=len, default=None)
    if suffix is None:
        return path
    stem = path.name[: -len(suffix)]
    return next((c for c in (path.with_name(stem + s) for s in SPLIT_SUFFIXES) if c.exists()), path)


def read_rows(
    path: Path,
    text_column: str = "text",
    label_column: str = "label",
    limit: int | None = None,
    *,
    labels_as_text: bool = False,
) -> tuple[list[str], list]:
    """The text and label cells of the first ``limit`` rows (all by default) of a dataset file, Parquet or CSV
    (plain or gzipped), read by the table jobs' reader (:func:`cascade.tables.table_io.read_batches`). Texts are
    ``str`` (a null text is ``""``); labels are as stored, or ``str`` with ``labels_as_text``."""
    import pyarrow as pa

    from cascade.tables.table_io import read_batches, table_schema

    if not path.is_file():
        raise ConfigError(f"dataset file {path} not found (set --data-dir or ${DATA_DIR_ENV})")
    schema, _ = table_schema(path, text_column)  # an unknown format fails here
    for column in (text_column, label_column):
        if column not in schema.names:
            raise ConfigError(f"{path}: no column {column!r} (columns: {schema.names})")
    columns = [text_column, label_column]
    batches, rows = [], 0
    for batch in read_batches(path, text_column, columns, strings=[label_column] if labels_as_text else ()):
        batches.append(batch)
        rows += batch.num_rows
        if limit is not None and rows >= limit:
            break
    if not batches:
        return [], []
    table = pa.Table.from_batches(batches).slice(0, limit)
    try:
        text = table.column(text_column).cast(pa.string())
        label = table.column(label_column)
        label = label.cast(pa.string()) if labels_as_text else label
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ConfigError(f"{path}: column {text_column!r} or {label_column!r} is not text: {exc}") from exc
    if label.null_count:
        raise ConfigError(f"{path}: {label.null_count} rows have no {label_column!r}")
    return ["" if t is None else t for t in text.to_pylist()], label.to_pylist()
