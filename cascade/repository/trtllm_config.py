"""GPU-profile configs of the LLM tiers and the streaming text endpoint, as ``model_config_pb2`` messages.

* ``tensorrt_llm`` -- the TensorRT-LLM engine in NVIDIA's ``tensorrtllm`` backend, written to the
  conventions of tensorrtllm_backend's ``all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt``:
  in-flight fused batching, ``gpt_model_path`` (the engine folder), ``max_beam_width``, KV-cache fraction,
  instance group ``KIND_CPU`` (the backend places the engine on the GPUs itself) and a **decoupled**
  transaction policy, so one model serves both the one-step scorer and token streaming.
* ``llm_large`` -- a thin Python BLS model over ``tensorrt_llm`` with the CPU scorer's contract
  (``contract.LLM_SCORER_SIGNATURE``); the logic is ``cascade.llm.trtllm``.
* ``llm_generate`` -- the decoupled streaming text endpoint, on both profiles (llama.cpp on CPU, streaming
  BLS over ``tensorrt_llm`` on GPU); the logic is ``cascade.llm.generate``.

Every config is round-tripped through ``text_format`` and Triton's protobuf before it is written
(:func:`validated`). **Unverified** on a GPU: see docs/gpu-llm.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from cascade import contract
from cascade.contract import Tensor
from cascade.errors import ConfigError
from cascade.repository.configgen import (
    BACKEND_LLM_GENERATE,
    BACKEND_LLM_TRTLLM,
    ModelSpec,
    parse_config,
    threads_parameter,
)

TRTLLM_BACKEND = "tensorrtllm"
BATCHING_STRATEGIES = ("inflight_fused_batching", "V1")
SCHEDULER_POLICIES = ("guaranteed_no_evict", "max_utilization")
FORCE_CPU_ONLY_INPUT_TENSORS = "FORCE_CPU_ONLY_INPUT_TENSORS"
DEFAULT_MAX_INPUT_LEN = 2048

_DTYPES = {"FP32": mc.TYPE_FP32, "INT32": mc.TYPE_INT32, "BYTES": mc.TYPE_STRING, "BOOL": mc.TYPE_BOOL}

# The rest of the backend's standard tensors (its names, used nowhere else): sampling knobs a client may
# send through, and the outputs the backend fills when a request asks for them.
_TRTLLM_EXTRA_INPUTS = (
    Tensor("stop_words_list", "INT32", (2, -1), optional=True),
    Tensor("bad_words_list", "INT32", (2, -1), optional=True),
    Tensor("embedding_bias", "FP32", (-1,), optional=True),
    Tensor("beam_width", "INT32", (), optional=True),
    Tensor("temperature", "FP32", (), optional=True),
    Tensor("runtime_top_k", "INT32", (), optional=True),
    Tensor("runtime_top_p", "FP32", (), optional=True),
    Tensor("len_penalty", "FP32", (), optional=True),
    Tensor("repetition_penalty", "FP32", (), optional=True),
    Tensor("presence_penalty", "FP32", (), optional=True),
    Tensor("frequency_penalty", "FP32", (), optional=True),
    Tensor("return_log_probs", "BOOL", (), optional=True),
    Tensor("return_context_logits", "BOOL", (), optional=True),
    Tensor("stop", "BOOL", (), optional=True),
)
_TRTLLM_EXTRA_OUTPUTS = (
    Tensor("cum_log_probs", "FP32", (-1,)),
    Tensor("output_log_probs", "FP32", (-1, -1)),
    Tensor("context_logits", "FP32", (-1, -1)),
    Tensor("batch_index", "INT32", (1,)),
    Tensor("sequence_index", "INT32", (1,)),
)
_RAGGED = frozenset({contract.TRTLLM_INPUT_IDS.name, "stop_words_list", "bad_words_list", "embedding_bias"})
TRTLLM_INPUTS = (
    contract.TRTLLM_INPUT_IDS,
    contract.TRTLLM_INPUT_LENGTHS,
    contract.TRTLLM_REQUEST_OUTPUT_LEN,
    contract.TRTLLM_END_ID,
    contract.TRTLLM_PAD_ID,
    contract.TRTLLM_STREAMING,
    contract.TRTLLM_RETURN_GENERATION_LOGITS,
    *_TRTLLM_EXTRA_INPUTS,
)
TRTLLM_OUTPUTS = (
    contract.TRTLLM_OUTPUT_IDS,
    contract.TRTLLM_SEQUENCE_LENGTH,
    contract.TRTLLM_GENERATION_LOGITS,
    *_TRTLLM_EXTRA_OUTPUTS,
)


# --------------------------------------------------------------------------------------------- helpers


def validated(config: mc.ModelConfig) -> mc.ModelConfig:
    """Round-trip ``config`` through ``text_format`` and Triton's protobuf; a mismatch is a ConfigError."""
    names = [t.name for t in config.input] + [t.name for t in config.output]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{config.name}: tensor names used twice: {dupes}")
    parsed = parse_config(text_format.MessageToString(config))
    if parsed != config:
        raise ConfigError(f"{config.name}: config.pbtxt does not survive a round trip through the protobuf")
    return parsed


def _add_tensors(items, tensors: Sequence[Tensor], ragged: frozenset[str] = frozenset(), is_input: bool = True):
    for tensor in tensors:
        item = items.add(name=tensor.name, data_type=_DTYPES[tensor.datatype], dims=list(tensor.dims) or [1])
        if not tensor.dims:  # per-row scalar: [batch, 1] on the wire, the model sees [batch]
            item.reshape.SetInParent()
        if is_input:
            item.optional = tensor.optional
            item.allow_ragged_batch = tensor.name in ragged


def _bool(value: bool) -> str:
    return "true" if value else "false"


@dataclass(frozen=True)
class ProtoSpec(ModelSpec):
    """A :class:`ModelSpec` carrying a ready ``ModelConfig`` (ragged inputs, decoupled policy, other backends),
    so that :class:`cascade.repository.writer.RepositoryWriter` writes it like any other model."""

    config: mc.ModelConfig | None = None

    @classmethod
    def of(cls, config: mc.ModelConfig, source: str = "") -> ProtoSpec:
        config = validated(config)
        return cls(name=config.name, inputs=(), outputs=(), source=source, backend=config.backend, config=config)

    def to_proto(self, profile: str = "cpu") -> mc.ModelConfig:  # the profile is already in the config
        out = mc.ModelConfig()
        out.CopyFrom(self.config)
        return out


# --------------------------------------------------------------------------------------------- configs


def tensorrt_llm_config(
    engine_dir: str | Path,
    *,
    max_batch_size: int = contract.LLM_MAX_BATCH_SIZE,
    max_beam_width: int = 1,
    kv_cache_free_gpu_mem_fraction: float = 0.9,
    batching_strategy: str = "inflight_fused_batching",
    batch_scheduler_policy: str = "guaranteed_no_evict",
    enable_kv_cache_reuse: bool = True,
    exclude_input_in_output: bool = True,
    decoupled: bool = True,
    max_queue_delay_us: int = 0,
) -> mc.ModelConfig:
    """The ``tensorrt_llm`` model: backend "tensorrtllm", the engine in ``engine_dir``."""
    if not str(engine_dir):
        raise ConfigError("engine_dir is empty")
    if batching_strategy not in BATCHING_STRATEGIES:
        raise ConfigError(f"batching_strategy {batching_strategy!r}: expected one of {BATCHING_STRATEGIES}")
    if batch_scheduler_policy not in SCHEDULER_POLICIES:
        raise ConfigError(f"batch_scheduler_policy {batch_scheduler_policy!r}: expected one of {SCHEDULER_POLICIES}")
    if not 0.0 < kv_cache_free_gpu_mem_fraction <= 1.0:
        raise ConfigError(f"kv_cache_free_gpu_mem_fraction must be in (0, 1], got {kv_cache_free_gpu_mem_fraction}")
    if max_beam_width < 1 or max_batch_size < 1:
        raise ConfigError("max_beam_width and max_batch_size must be at least 1")
    config = mc.ModelConfig(name=contract.TRTLLM_MODEL, backend=TRTLLM_BACKEND, max_batch_size=max_batch_size)
    config.model_transaction_policy.decoupled = decoupled
    config.dynamic_batching.preferred_batch_size.append(max_batch_size)
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    _add_tensors(config.input, TRTLLM_INPUTS, _RAGGED)
    _add_tensors(config.output, TRTLLM_OUTPUTS, is_input=False)
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)  # the backend requires KIND_CPU
    parameters = {
        contract.TRTLLM_CFG_ENGINE_DIR: str(engine_dir),
        contract.TRTLLM_CFG_BATCHING_STRATEGY: batching_strategy,
        contract.TRTLLM_CFG_MAX_BEAM_WIDTH: str(max_beam_width),
        contract.TRTLLM_CFG_KV_CACHE_FRACTION: str(kv_cache_free_gpu_mem_fraction),
        contract.TRTLLM_CFG_SCHEDULER_POLICY: batch_scheduler_policy,
        contract.TRTLLM_CFG_EXCLUDE_INPUT: _bool(exclude_input_in_output),
        contract.TRTLLM_CFG_KV_CACHE_REUSE: _bool(enable_kv_cache_reuse),
        FORCE_CPU_ONLY_INPUT_TENSORS: "no",
    }
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return validated(config)


def llm_large_gpu_config(
    tokenizer_dir: str | Path,
    max_input_len: int = DEFAULT_MAX_INPUT_LEN,
    calibrate: bool = True,
    instance_count: int = 1,
    trtllm_model: str = contract.TRTLLM_MODEL,
) -> mc.ModelConfig:
    """``llm_large`` on GPU: the CPU scorer's contract, BLS over ``tensorrt_llm`` (one step, its logits)."""
    if max_input_len < 1:
        raise ConfigError(f"max_input_len must be positive, got {max_input_len}")
    inputs, outputs = contract.LLM_SCORER_SIGNATURE
    spec = ModelSpec(
        name=contract.tier_model_name("", contract.TIER_LLM_LARGE),
        inputs=inputs,
        outputs=outputs,
        source=BACKEND_LLM_TRTLLM,
        max_batch_size=contract.LLM_MAX_BATCH_SIZE,
        instance_count=instance_count,  # KIND_CPU: tokenizing and BLS glue; the GPU work is tensorrt_llm's
        parameters={
            contract.CFG_RUNTIME: contract.RUNTIME_TRTLLM,
            contract.CFG_TOKENIZER_DIR: str(tokenizer_dir),
            contract.CFG_MAX_INPUT_LEN: str(max_input_len),
            contract.CFG_TRTLLM_MODEL: trtllm_model,
            contract.CFG_CALIBRATE: _bool(calibrate),
        },
        queue_timeout_us=contract.DEFAULT_BLS_TIMEOUT_MS * 1000,
    )
    return validated(spec.to_proto("cpu"))


def llm_generate_config(
    runtime: str,
    *,
    llm_model: str | None = None,
    n_ctx: int = 1024,
    num_threads: int | str = contract.THREADS_AUTO,
    tokenizer_dir: str | Path | None = None,
    max_input_len: int = DEFAULT_MAX_INPUT_LEN,
    trtllm_model: str = contract.TRTLLM_MODEL,
    default_max_tokens: int = contract.DEFAULT_GENERATE_MAX_TOKENS,
    max_tokens_limit: int = contract.GENERATE_MAX_TOKENS_LIMIT,
) -> mc.ModelConfig:
    """``llm_generate``: decoupled, one prompt per request, one text piece per response.

    ``runtime`` is ``contract.RUNTIME_LLAMA_CPP`` (CPU profile: ``llm_model`` is a packaged GGUF name) or
    ``contract.RUNTIME_TRTLLM`` (GPU profile: ``tokenizer_dir`` is the engine's Hugging Face tokenizer).
    """
    params = {
        contract.CFG_RUNTIME: runtime,
        contract.CFG_DEFAULT_MAX_TOKENS: str(default_max_tokens),
        contract.CFG_MAX_TOKENS_LIMIT: str(max_tokens_limit),
    }
    if not 1 <= default_max_tokens <= max_tokens_limit:
        raise ConfigError(
            f"need 1 <= default_max_tokens ({default_max_tokens}) <= max_tokens_limit ({max_tokens_limit})"
        )
    if runtime == contract.RUNTIME_LLAMA_CPP:
        if not llm_model:
            raise ConfigError("the llama.cpp runtime needs llm_model")
        params |= {
            contract.CFG_LLM_MODEL: llm_model,
            contract.CFG_N_CTX: str(n_ctx),
            contract.CFG_NUM_THREADS: threads_parameter(num_threads),
        }
    elif runtime == contract.RUNTIME_TRTLLM:
        if not tokenizer_dir:
            raise ConfigError("the tensorrt_llm runtime needs tokenizer_dir")
        params |= {
            contract.CFG_TOKENIZER_DIR: str(tokenizer_dir),
            contract.CFG_MAX_INPUT_LEN: str(max_input_len),
            contract.CFG_TRTLLM_MODEL: trtllm_model,
        }
    else:
        raise ConfigError(f"unknown runtime {runtime!r}: {contract.RUNTIME_LLAMA_CPP} or {contract.RUNTIME_TRTLLM}")
    inputs, outputs = contract.LLM_GENERATE_SIGNATURE
    spec = ModelSpec(
        name=contract.LLM_GENERATE_MODEL,
        inputs=inputs,
        outputs=outputs,
        source=BACKEND_LLM_GENERATE,
        max_batch_size=1,  # one prompt per request: [1, 1] on the wire; streams are not batched here
        parameters=params,
    )
    config = spec.to_proto("cpu")
    config.ClearField("dynamic_batching")
    config.model_transaction_policy.decoupled = True
    return validated(config)


# --------------------------------------------------------------------------------------------- repositories


def write_gpu_llm_models(
    repo: str | Path,
    engine_dir: str | Path,
    tokenizer_dir: str | Path,
    tp_size: int = 1,
    pp_size: int = 1,
    *,
    max_input_len: int = DEFAULT_MAX_INPUT_LEN,
    templates: Sequence = (),
    calibrate: bool = True,
    kv_cache_free_gpu_mem_fraction: float = 0.9,
    max_batch_size: int = contract.LLM_MAX_BATCH_SIZE,
) -> list[str]:
    """Write ``tensorrt_llm``, ``llm_large`` (GPU) and ``llm_generate`` (GPU) into ``repo`` atomically.

    When the engine is already built, its ``config.json`` must match ``tp_size``/``pp_size``/``max_input_len``
    and have generation logits in FP32. ``templates`` (the tasks' :class:`cascade.llm.scorer.PromptTemplate`) are
    checked against the tokenizer: verbalizations must start with distinct tokens on this one-step path.
    """
    from cascade.repository.engine_info import check_engine, read_engine_config
    from cascade.repository.writer import RepositoryWriter

    check_engine(read_engine_config(Path(engine_dir)), tp_size, pp_size, max_input_len)
    if templates:
        from cascade.llm.trtllm import check_template, load_tokenizer

        tokenizer = load_tokenizer(tokenizer_dir)
        for template in templates:
            check_template(tokenizer, template)
    specs = [
        ProtoSpec.of(
            tensorrt_llm_config(
                engine_dir, max_batch_size=max_batch_size, kv_cache_free_gpu_mem_fraction=kv_cache_free_gpu_mem_fraction
            )
        ),
        ProtoSpec.of(llm_large_gpu_config(tokenizer_dir, max_input_len, calibrate), BACKEND_LLM_TRTLLM),
        ProtoSpec.of(
            llm_generate_config(contract.RUNTIME_TRTLLM, tokenizer_dir=tokenizer_dir, max_input_len=max_input_len),
            BACKEND_LLM_GENERATE,
        ),
    ]
    with RepositoryWriter(Path(repo)) as writer:
        for spec in specs:
            writer.add(spec)
    return [spec.name for spec in specs]


def cpu_generate_spec(llm_model: str, n_ctx: int = 1024, num_threads: int | str = contract.THREADS_AUTO) -> ProtoSpec:
    """The CPU profile's ``llm_generate`` (llama.cpp over a packaged GGUF), for a
    :class:`cascade.repository.writer.RepositoryWriter`; ``cascade_export.build.llm_tiers.ensure_llms`` writes it."""
    return ProtoSpec.of(
        llm_generate_config(contract.RUNTIME_LLAMA_CPP, llm_model=llm_model, n_ctx=n_ctx, num_threads=num_threads),
        BACKEND_LLM_GENERATE,
    )
