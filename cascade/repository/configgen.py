"""``config.pbtxt`` generated from a typed spec and checked against Triton's ``model_config`` protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from cascade import contract
from cascade.contract import Tensor
from cascade.errors import ConfigError
from cascade.runtime.sizing import positive_int

_DTYPES = {"FP32": mc.TYPE_FP32, "INT32": mc.TYPE_INT32, "BYTES": mc.TYPE_STRING, "BOOL": mc.TYPE_BOOL}
#: Python-backend sources (under python_backends/) that a model's ``1/model.py`` is copied from.
BACKEND_GATE = "gate"
BACKEND_ONNX_RUNNER = "onnx_runner"
BACKEND_LLM_SCORER = "llm_scorer"
#: An LLM tier on an OpenAI-compatible endpoint (cascade.llm.remote).
BACKEND_LLM_REMOTE = "llm_remote"
#: The GPU large tier (BLS over ``tensorrt_llm``) and the streaming text endpoint (cascade.repository.trtllm_config).
BACKEND_LLM_TRTLLM = "llm_trtllm"
BACKEND_LLM_GENERATE = "llm_generate"


@dataclass(frozen=True)
class ModelSpec:
    """Everything that goes into one model's config.pbtxt."""

    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    #: Which python_backends/<source>/model.py serves the model.
    source: str
    parameters: dict[str, str] = field(default_factory=dict)
    n_labels: int | None = None
    max_batch_size: int = contract.DEFAULT_MAX_BATCH_SIZE
    instance_count: int = 1
    backend: str = "python"
    max_queue_delay_us: int = 0
    #: Requests queued longer than this are rejected; callers (the gate's BLS ``timeout``) may only
    #: shorten it. Triton bounds queueing this way, not execution. None: no queue timeout.
    queue_timeout_us: int | None = None

    def _dims(self, tensor: Tensor) -> list[int]:
        if tensor.name == contract.PROBS.name and self.n_labels is not None:
            return [self.n_labels]
        return list(tensor.dims) or [1]

    def to_proto(self, profile: str = "cpu") -> mc.ModelConfig:
        if profile != "cpu":  # the GPU profile writes its configs whole (cascade.repository.trtllm_config.ProtoSpec)
            raise ConfigError(f"unknown profile {profile!r} for a ModelSpec: it writes CPU configs (KIND_CPU) only")
        config = mc.ModelConfig(name=self.name, backend=self.backend, max_batch_size=self.max_batch_size)
        for tensor in self.inputs:
            item = config.input.add(
                name=tensor.name,
                data_type=_DTYPES[tensor.datatype],
                dims=self._dims(tensor),
                optional=tensor.optional,
            )
            if not tensor.dims:  # per-row scalar: clients send [batch, 1], the model sees [batch]
                item.reshape.SetInParent()
        for tensor in self.outputs:
            item = config.output.add(name=tensor.name, data_type=_DTYPES[tensor.datatype], dims=self._dims(tensor))
            if not tensor.dims:
                item.reshape.SetInParent()
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=self.instance_count)
        config.dynamic_batching.max_queue_delay_microseconds = self.max_queue_delay_us
        if self.queue_timeout_us is not None:
            policy = config.dynamic_batching.default_queue_policy
            policy.timeout_action = mc.ModelQueuePolicy.REJECT
            policy.default_timeout_microseconds = self.queue_timeout_us
            policy.allow_timeout_override = True
        for key, value in self.parameters.items():
            config.parameters[key].string_value = value
        return config

    def to_pbtxt(self, profile: str = "cpu") -> str:
        return text_format.MessageToString(self.to_proto(profile))


def parse_config(text: str) -> mc.ModelConfig:
    """Parse config.pbtxt text with Triton's protobuf; a typo or unknown field is a ConfigError."""
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"invalid config.pbtxt: {exc}") from exc


def write_config(spec: ModelSpec, model_dir: Path, profile: str = "cpu") -> Path:
    text = spec.to_pbtxt(profile)
    parse_config(text)  # round trip through the protobuf parser
    path = model_dir / "config.pbtxt"
    path.write_text(text)
    return path


# --- the specs of the cascade's models ---------------------------------------------------------------
def threads_parameter(num_threads: int | str) -> str:
    """A ``num_threads`` parameter: ``auto`` (sized when the model loads) or a positive integer."""
    if num_threads == contract.THREADS_AUTO:
        return contract.THREADS_AUTO
    return str(positive_int(num_threads, contract.CFG_NUM_THREADS))


def embedder_spec(
    num_threads: int | str = contract.THREADS_AUTO,
    embedding_dim: int = contract.EMBEDDING_DIM,
    embedder: str = "minilm-l6",
) -> ModelSpec:
    """The shared embedder (``embedder``, a name of ``cascade.embedders``, recorded for clients); ``num_threads``
    ``auto``: sized at load time (``cascade.runtime.sizing``)."""
    inputs, outputs = contract.EMBEDDER_SIGNATURE
    return ModelSpec(
        name=contract.EMBEDDER_MODEL,
        inputs=inputs,
        outputs=contract.with_embedding_dim(outputs, embedding_dim),
        source=BACKEND_ONNX_RUNNER,
        parameters={contract.CFG_NUM_THREADS: threads_parameter(num_threads), contract.CFG_EMBEDDER: embedder},
        queue_timeout_us=contract.DEFAULT_BLS_TIMEOUT_MS * 1000,
    )


def tier_spec(
    task: str,
    tier: int,
    n_labels: int,
    num_threads: int | str = contract.THREADS_AUTO,
    embedding_dim: int = contract.EMBEDDING_DIM,
) -> ModelSpec:
    if tier in contract.EMBEDDING_TIERS:
        inputs, outputs = contract.EMBEDDING_TIER_SIGNATURE
    elif tier == contract.TIER_ENCODER:
        inputs, outputs = contract.TEXT_TIER_SIGNATURE
    else:
        raise ConfigError(f"tier {tier} has no per-task model")
    return ModelSpec(
        name=contract.tier_model_name(task, tier),
        inputs=contract.with_embedding_dim(inputs, embedding_dim),
        outputs=outputs,
        source=BACKEND_ONNX_RUNNER,
        n_labels=n_labels,
        parameters={contract.CFG_NUM_THREADS: threads_parameter(num_threads)},
        queue_timeout_us=contract.DEFAULT_BLS_TIMEOUT_MS * 1000,
    )


def gate_spec(
    gate_parameters: dict[str, str],
    task: str,
    n_labels: int,
    instance_count: int = 2,
    embedding_dim: int = contract.EMBEDDING_DIM,
) -> ModelSpec:
    inputs, outputs = contract.GATE_SIGNATURE
    return ModelSpec(
        name=contract.gate_model_name(task),
        inputs=contract.with_embedding_dim(inputs, embedding_dim),
        outputs=outputs,
        source=BACKEND_GATE,
        n_labels=n_labels,
        parameters=dict(gate_parameters),
        instance_count=instance_count,
        max_batch_size=contract.GATE_MAX_BATCH_SIZE,
    )


def llm_spec(
    tier: int,
    llm_model: str,
    n_ctx: int = 1024,
    num_threads: int | str = contract.THREADS_AUTO,
    calibrate: bool = True,
    price: dict[str, str] | None = None,
) -> ModelSpec:
    """A shared LLM scorer (tier 3 ``llm_small`` or tier 4 ``llm_large``) on llama.cpp; ``num_threads``
    ``auto``: sized at load time from the server's cores or ``$CASCADE_LLM_THREADS`` (``cascade.runtime.sizing``);
    ``price``: ``cascade.llm.meter.Price.parameters()``."""
    parameters = {
        contract.CFG_LLM_MODEL: llm_model,
        contract.CFG_N_CTX: str(n_ctx),
        contract.CFG_NUM_THREADS: threads_parameter(num_threads),
        contract.CFG_CALIBRATE: "true" if calibrate else "false",
    }
    return _scorer_spec(tier, BACKEND_LLM_SCORER, parameters | (price or {}), contract.LLM_INSTANCES)


def remote_llm_spec(tier: int, endpoint, calibrate: bool = True, price: dict[str, str] | None = None) -> ModelSpec:
    """An LLM tier scored by an OpenAI-compatible endpoint (``cascade.llm.openai_http.Endpoint``): the scorer's
    contract, the endpoint's spec and call settings as parameters; the name of the key's environment variable,
    never the key. One instance: its rows go out concurrently, up to the endpoint's limit."""
    parameters = {
        contract.CFG_LLM_ENDPOINT: endpoint.spec,
        contract.CFG_KEY_ENV: endpoint.key_env,
        contract.CFG_CONCURRENCY: str(endpoint.concurrency),
        contract.CFG_TIMEOUT_S: repr(float(endpoint.timeout_s)),
        contract.CFG_RETRIES: str(endpoint.retries),
        contract.CFG_VERIFY_TLS: "true" if endpoint.verify_tls else "false",
        contract.CFG_SCORING_MODE: endpoint.mode,
        contract.CFG_CALIBRATE: "true" if calibrate else "false",
    }
    return _scorer_spec(tier, BACKEND_LLM_REMOTE, parameters | (price or {}), 1)


def _scorer_spec(tier: int, source: str, parameters: dict[str, str], instances: int) -> ModelSpec:
    """An LLM tier's model: the scorer contract, served by ``source`` with these parameters."""
    if tier not in contract.LLM_TIERS:
        raise ConfigError(f"tier {tier} is not an LLM tier")
    inputs, outputs = contract.LLM_SCORER_SIGNATURE
    return ModelSpec(
        name=contract.tier_model_name("", tier),
        inputs=inputs,
        outputs=outputs,
        source=source,
        max_batch_size=contract.LLM_MAX_BATCH_SIZE,
        parameters=parameters,
        queue_timeout_us=contract.DEFAULT_BLS_TIMEOUT_MS * 1000,
        instance_count=instances,
    )
