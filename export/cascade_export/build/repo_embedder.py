"""The repository's embedder, shared by every task: exported to ONNX once (:func:`ensure_embedder`), which one
a repository holds, and embedding texts with it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cascade import contract, embedders
from cascade.errors import ConfigError
from cascade.repository import configgen
from cascade.repository.writer import RepositoryWriter
from cascade_export.build.stage import log

EMBEDDER_FILES = ("model.onnx", "tokenizer.json")


def embedder_dir(repo: Path) -> Path:
    return Path(repo) / contract.EMBEDDER_MODEL / "1"


def ensure_embedder(repo: Path, name: str | None = None, force: bool = False) -> Path:
    """The repository's embedder, exported to ONNX once and shared by every task (``name``, default
    :data:`cascade.embedders.DEFAULT_EMBEDDER` for a new repository). Asking for another embedder than the one a
    repository holds is a :class:`ConfigError`: its tasks' models were trained on that one's vectors."""
    from cascade_export.build.embedder import export_embedder

    target = embedder_dir(repo)
    existing = embedders.of_repository(repo) if all((target / f).is_file() for f in EMBEDDER_FILES) else None
    if existing is not None and name not in (None, existing.name):
        raise ConfigError(
            f"{repo} is built with embedder {existing.name!r}, and every task in a repository shares it: "
            f"build with --embedder {existing.name}, or build the {name!r} tasks into another repository"
        )
    if existing is not None and not force:
        return target
    chosen = embedders.get(name or (existing.name if existing else embedders.DEFAULT_EMBEDDER))
    start = time.perf_counter()
    with RepositoryWriter(repo) as writer:
        spec = configgen.embedder_spec(embedding_dim=chosen.dim, embedder=chosen.name)
        export_embedder(writer.add(spec), chosen.name)
    log(f"exported the embedder {chosen.name} ({chosen.dim}-d) to ONNX in {time.perf_counter() - start:.1f} s")
    return target


def repository_embedder(repo: Path) -> embedders.Embedder:
    found = embedders.of_repository(repo)
    if found is None:
        raise ConfigError(f"{repo} has no embedder yet: build a task into it first")
    return found


def embed(repo: Path, texts: list[str]) -> np.ndarray:
    from cascade.runtime.onnx_runner import OnnxRunner

    return OnnxRunner(embedder_dir(repo), num_threads=2).run(texts)
