"""Build the TensorRT-LLM engine of the large tier (GPU profile). **Unverified**: not run on a GPU yet.

Two steps, as in TensorRT-LLM's examples (run them inside the NGC ``tritonserver:<yy.mm>-trtllm-python-py3``
container, which has ``tensorrt_llm`` and ``trtllm-build``, with a TensorRT-LLM checkout for the examples)::

    python -m cascade_export.build.trtllm_engine --model-dir HF_DIR --out ENGINE_DIR --tp 8 --dtype bfloat16 \\
        --examples-dir /path/to/TensorRT-LLM/examples [--run]

1. ``convert_checkpoint.py`` (the model family's example) turns the Hugging Face checkpoint into a
   TensorRT-LLM checkpoint, **sharded here**: tensor/pipeline parallelism (``--tp_size``/``--pp_size``) is a
   property of the checkpoint; ``trtllm-build`` has no TP flag and builds one engine per rank.
2. ``trtllm-build`` compiles the engines with ``--gather_generation_logits`` (without it the scorer gets no
   logits) and ``--logits_dtype float32`` (the backend's ``generation_logits`` output is FP32; some backend
   versions copied half-precision logits into an FP32 buffer unconverted), plus ``--max_input_len``,
   ``--max_seq_len`` and ``--max_batch_size``; paged context FMHA so that ``enable_kv_cache_reuse`` can reuse
   the KV cache of a task's shared instruction and few-shot prefix, like the CPU scorer's prefix cache.

Without ``--run`` the commands are only printed. When the Hugging Face ``config.json`` is readable, the TP
size must divide the attention heads (and the KV heads of grouped-query attention).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cascade.errors import ConfigError

DTYPES = ("bfloat16", "float16", "float32")
#: Hugging Face ``model_type`` -> the TensorRT-LLM example folder whose convert_checkpoint.py handles it.
FAMILIES = {
    "llama": "llama",
    "mistral": "llama",
    "mixtral": "mixtral",
    "qwen2": "qwen",
    "qwen3": "qwen",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3_text": "gemma",
    "phi3": "phi",
    "falcon": "falcon",
    "gpt2": "gpt",
}
EXAMPLES_DIR_ENV = "TRTLLM_EXAMPLES_DIR"
DEFAULT_EXAMPLES_DIR = "/app/tensorrt_llm/examples"


@dataclass(frozen=True)
class EngineBuild:
    """Everything the two commands need."""

    model_dir: Path
    out: Path
    tp: int = 1
    pp: int = 1
    dtype: str = "bfloat16"
    max_batch_size: int = 64
    max_input_len: int = 2048
    max_output_len: int = 256  # the scorer needs 1 token; the streaming endpoint more
    max_beam_width: int = 1
    family: str | None = None  # None: from config.json's model_type
    examples_dir: Path = Path(os.environ.get(EXAMPLES_DIR_ENV, DEFAULT_EXAMPLES_DIR))
    checkpoint_dir: Path | None = None  # None: <out>.ckpt beside the engine
    kv_cache_reuse: bool = True
    python: str = "python3"
    trtllm_build: str = "trtllm-build"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        for name in ("tp", "pp", "max_batch_size", "max_input_len", "max_output_len", "max_beam_width"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def max_seq_len(self) -> int:
        return self.max_input_len + self.max_output_len

    @property
    def ckpt(self) -> Path:
        return self.checkpoint_dir or self.out.with_name(self.out.name + ".ckpt")


def hf_config(model_dir: Path) -> dict | None:
    """The Hugging Face ``config.json`` of ``model_dir``, or None when it is not there or not JSON."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("text_config", config) if config.get("model_type") == "gemma3" else config


def check_parallelism(config: dict | None, tp: int, pp: int = 1) -> None:
    """TP must divide the attention heads and the KV heads; PP must not exceed the layers."""
    if tp < 1 or pp < 1:
        raise ConfigError(f"tp and pp must be at least 1, got tp={tp} pp={pp}")
    if not config:
        return
    heads = config.get("num_attention_heads")
    if isinstance(heads, int) and heads % tp:
        raise ConfigError(f"--tp {tp} does not divide the model's {heads} attention heads")
    kv_heads = config.get("num_key_value_heads")
    if isinstance(kv_heads, int) and kv_heads % tp and tp % kv_heads:
        raise ConfigError(
            f"--tp {tp} and the model's {kv_heads} key/value heads: one must divide the other "
            "(TensorRT-LLM replicates KV heads only when tp is a multiple of their count)"
        )
    layers = config.get("num_hidden_layers")
    if isinstance(layers, int) and pp > layers:
        raise ConfigError(f"--pp {pp} exceeds the model's {layers} layers")


def family_of(config: dict | None, family: str | None) -> str:
    if family:
        return family
    model_type = (config or {}).get("model_type")
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    raise ConfigError(
        f"cannot tell the TensorRT-LLM example family of model_type {model_type!r}: pass --family "
        f"(known: {', '.join(sorted(set(FAMILIES.values())))})"
    )


def convert_script(examples_dir: Path, family: str) -> Path:
    """``examples/models/core/<family>/convert_checkpoint.py`` (TensorRT-LLM >= 0.17) or ``examples/<family>/``."""
    candidates = [
        examples_dir / "models" / "core" / family / "convert_checkpoint.py",
        examples_dir / family / "convert_checkpoint.py",
    ]
    return next((c for c in candidates if c.is_file()), candidates[0])


def commands(build: EngineBuild) -> list[list[str]]:
    """The two commands: checkpoint conversion (sharded tp x pp) and ``trtllm-build``."""
    config = hf_config(build.model_dir)
    check_parallelism(config, build.tp, build.pp)
    family = family_of(config, build.family)
    convert = [
        build.python,
        str(convert_script(build.examples_dir, family)),
        "--model_dir",
        str(build.model_dir),
        "--output_dir",
        str(build.ckpt),
        "--dtype",
        build.dtype,
        "--tp_size",
        str(build.tp),
        "--pp_size",
        str(build.pp),
    ]
    engine = [
        build.trtllm_build,
        "--checkpoint_dir",
        str(build.ckpt),
        "--output_dir",
        str(build.out),
        "--gemm_plugin",
        "auto",
        "--max_batch_size",
        str(build.max_batch_size),
        "--max_input_len",
        str(build.max_input_len),
        "--max_seq_len",
        str(build.max_seq_len),
        "--max_beam_width",
        str(build.max_beam_width),
        "--gather_generation_logits",
        "--logits_dtype",
        "float32",
        "--workers",
        str(build.world_size),
    ]
    if build.kv_cache_reuse:
        engine += ["--use_paged_context_fmha", "enable"]
    return [convert, engine]


def shell_line(command: Sequence[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


# --------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    prog = "python -m cascade_export.build.trtllm_engine"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, required=True, help="Hugging Face model folder")
    p.add_argument("--out", type=Path, required=True, help="engine folder (gpt_model_path of tensorrt_llm)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-input-len", type=int, default=2048)
    p.add_argument("--max-output-len", type=int, default=256)
    p.add_argument("--max-beam-width", type=int, default=1)
    p.add_argument("--family", help="TensorRT-LLM example folder (default: from config.json's model_type)")
    p.add_argument("--examples-dir", type=Path, default=Path(os.environ.get(EXAMPLES_DIR_ENV, DEFAULT_EXAMPLES_DIR)))
    p.add_argument("--checkpoint-dir", type=Path, help="converted checkpoint (default: <out>.ckpt)")
    p.add_argument("--no-kv-cache-reuse", action="store_true", help="no paged context FMHA")
    p.add_argument("--run", action="store_true", help="run the commands (default: print them)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        build = EngineBuild(
            model_dir=args.model_dir,
            out=args.out,
            tp=args.tp,
            pp=args.pp,
            dtype=args.dtype,
            max_batch_size=args.max_batch_size,
            max_input_len=args.max_input_len,
            max_output_len=args.max_output_len,
            max_beam_width=args.max_beam_width,
            family=args.family,
            examples_dir=args.examples_dir,
            checkpoint_dir=args.checkpoint_dir,
            kv_cache_reuse=not args.no_kv_cache_reuse,
        )
        cmds = commands(build)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for cmd in cmds:
        print(shell_line(cmd), flush=True)
        if args.run:
            code = subprocess.call(cmd)
            if code:
                print(f"error: exit status {code}: {shell_line(cmd)}", file=sys.stderr)
                return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
