"""A table's cells: the text and embedding columns' types checked, and per row the UTF-8 text or the embedding to
send, with why a row is unusable (null, blank, not UTF-8, wrong length, NaN/Inf)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cascade import contract, embedders
from cascade.errors import ConfigError
from cascade.gate.arrays import all_finite

TEXT_TYPES = (pa.string(), pa.large_string(), pa.binary(), pa.large_binary())


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
