"""What the serving side checks in a built TensorRT-LLM engine (its ``config.json``) before a repository is
generated for it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cascade.errors import ConfigError


@dataclass(frozen=True)
class EngineInfo:
    """What the serving side checks in a built engine's ``config.json`` (None: the key was not there)."""

    tp: int | None
    pp: int | None
    max_input_len: int | None
    max_batch_size: int | None
    max_beam_width: int | None
    gather_generation_logits: bool | None
    logits_dtype: str | None


def read_engine_config(engine_dir: Path) -> EngineInfo | None:
    """Read ``<engine_dir>/config.json`` as trtllm-build writes it; None when there is none."""
    try:
        config = json.loads((Path(engine_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    pretrained = config.get("pretrained_config", {})
    build = config.get("build_config", {})
    mapping = pretrained.get("mapping", {})
    gather = build.get("gather_generation_logits")
    if gather is None:
        gather = build.get("gather_all_token_logits")
    return EngineInfo(
        tp=mapping.get("tp_size"),
        pp=mapping.get("pp_size"),
        max_input_len=build.get("max_input_len"),
        max_batch_size=build.get("max_batch_size"),
        max_beam_width=build.get("max_beam_width"),
        gather_generation_logits=gather,
        logits_dtype=pretrained.get("logits_dtype"),
    )


def check_engine(info: EngineInfo | None, tp: int, pp: int, max_input_len: int) -> None:
    """The engine matches what the repository is generated for (skipped when the engine is not built yet)."""
    if info is None:
        return
    if info.tp is not None and info.tp != tp:
        raise ConfigError(f"the engine is built for tp={info.tp}, not tp={tp}")
    if info.pp is not None and info.pp != pp:
        raise ConfigError(f"the engine is built for pp={info.pp}, not pp={pp}")
    if info.max_input_len is not None and max_input_len > info.max_input_len:
        raise ConfigError(f"max_input_len={max_input_len} exceeds the engine's max_input_len={info.max_input_len}")
    if info.gather_generation_logits is False:
        raise ConfigError("the engine was built without --gather_generation_logits: llm_large needs the logits")
    if info.logits_dtype not in (None, "float32"):
        raise ConfigError(f"the engine's logits are {info.logits_dtype}: rebuild with --logits_dtype float32")
