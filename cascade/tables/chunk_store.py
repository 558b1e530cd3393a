"""A job's committed chunks (``OUT.parts/``): the manifest of its arguments, one file per finished chunk, and their
merge into the output; what lets an interrupted job resume without losing or repeating rows."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa

from cascade.errors import ConfigError
from cascade.tables.table_io import table_format, write_table_atomic

PARTS_SUFFIX = ".parts"
MANIFEST = "manifest.json"


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
        """Arrow IPC: no encoding on the way in, memory-mapped on the way out. The temporary name is the writer's own
        (its process id): two workers committing the same chunk (a Ray task run again) never share one."""
        tmp = self.dir / f".part-{k:06d}.{os.getpid()}.tmp"
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
                yield _cast(table, schema)

        return write_table_atomic(tables(), schema, out)

    def remove(self) -> None:
        shutil.rmtree(self.dir)


def _cast(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table.cast(schema)``, where a fixed-size list column becomes a variable-size list with its null rows empty:
    a plain cast leaves each null row spanning the list's size, and Parquet refuses that ("Lists with non-zero length
    null components") unless the nulls happen to end the chunk."""
    columns = []
    for name, f in zip(table.column_names, schema, strict=True):
        column = table.column(name)
        if pa.types.is_fixed_size_list(column.type) and pa.types.is_list(f.type) and column.null_count:
            column = pa.chunked_array([_to_list(chunk, f.type) for chunk in column.chunks], f.type)
        elif column.type != f.type:
            column = column.cast(f.type)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def _to_list(array: pa.FixedSizeListArray, kind: pa.DataType) -> pa.Array:
    import numpy as np

    valid = np.asarray(array.is_valid())
    offsets = np.zeros(len(array) + 1, np.int32)
    np.cumsum(np.where(valid, array.type.list_size, 0), out=offsets[1:])
    values = array.filter(pa.array(valid)).flatten().cast(kind.value_type)
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=kind, mask=pa.array(~valid))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def input_identity(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
