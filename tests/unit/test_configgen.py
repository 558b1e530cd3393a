"""config.pbtxt generation from the typed spec (``cascade.repository.configgen``), checked with Triton's model_config
protobuf:
each config follows its spec, takes what the gate sends it (``cascade.gate.tiers``) and refuses bad input."""

import inspect
from types import SimpleNamespace

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from cascade import contract
from cascade.errors import ConfigError
from cascade.gate.config import GateConfig
from cascade.gate.tiers import BlsCalls, BlsTier
from cascade.repository import configgen

TEXT, EMBEDDING, PROBS = contract.TEXT.name, contract.EMBEDDING.name, contract.PROBS.name
NEWS_LABELS = ("world", "sports", "business")
#: How many rows the gate sends a model per request unless the call says otherwise.
GATE_CHUNK = inspect.signature(BlsCalls.call).parameters["max_batch"].default
_NUMPY = {mc.TYPE_FP32: np.float32, mc.TYPE_STRING: np.object_, mc.TYPE_INT32: np.int32, mc.TYPE_BOOL: np.bool_}


def gate_params():
    return GateConfig("sst2", ("negative", "positive"), (0, 1, 2), {0: 0.9, 1: 0.8}).to_parameters()


def news_gate(**kwargs) -> GateConfig:
    return GateConfig("news", NEWS_LABELS, (0, 1, 2), {0: 0.9, 1: 0.8}, **kwargs)


def read(spec: configgen.ModelSpec) -> mc.ModelConfig:
    """The config as Triton reads it from the written config.pbtxt."""
    return configgen.parse_config(spec.to_pbtxt())


def _by_name(items):
    return {item.name: item for item in items}


def _kind(tensor) -> tuple[int, list[int]]:
    return tensor.data_type, list(tensor.dims)


def assert_takes(config: mc.ModelConfig, inputs: dict) -> None:
    """Triton takes a request of these arrays ([rows, ...]) for this config: each declared, of its dtype and shape,
    no required input missing."""
    declared = _by_name(config.input)
    for name, array in inputs.items():
        assert name in declared, (config.name, name)
        assert array.dtype == _NUMPY[declared[name].data_type], (config.name, name, array.dtype)
        dims, shape = list(declared[name].dims), array.shape[1:]
        fits = len(shape) == len(dims) and all(d in (-1, n) for d, n in zip(dims, shape, strict=True))
        assert fits, (config.name, name, shape, dims)
    required = {name for name, tensor in declared.items() if not tensor.optional}
    assert required <= set(inputs), (config.name, required - set(inputs))


def gate_call(call):
    """Run ``call(calls, rows)`` against a recording stand-in of the gate's BLS calls: [(model, inputs, output, rows
    per request)]."""
    sent = []

    def record(model, inputs, output, allowance_s, queue_deadline, max_batch=GATE_CHUNK, parameters=None):
        sent.append((model, inputs, output, max_batch))
        return np.zeros((len(next(iter(inputs.values()))), len(NEWS_LABELS)), np.float32)

    rows = SimpleNamespace(
        text=lambda idx: ["a gripping film", "dull"][: len(idx)],
        embedding=lambda idx: np.zeros((len(idx), 512), np.float32),
        queue_deadline=None,
    )
    call(SimpleNamespace(config=news_gate(), call=record), rows)
    return sent


def test_gate_config_follows_its_spec():
    gate = news_gate(bls_timeout_ms=5_000)
    spec = configgen.gate_spec(gate.to_parameters(), "news", n_labels=3, instance_count=4, embedding_dim=512)
    config = read(spec)
    assert config == spec.to_proto()
    inputs, outputs = _by_name(config.input), _by_name(config.output)
    assert list(inputs[EMBEDDING].dims) == [512] and list(outputs[PROBS].dims) == [3]
    assert [group.count for group in config.instance_group] == [4]
    # The gate reads back the settings it was written with.
    assert GateConfig.from_parameters({k: v.string_value for k, v in config.parameters.items()}) == gate
    # A client's rows: a text each ([rows, 1] on the wire), or an embedding each, or both (the gate checks each row).
    assert_takes(config, {TEXT: np.array([[b"a gripping film"], [b"dull"]], dtype=np.object_)})
    assert_takes(config, {EMBEDDING: np.zeros((2, 512), np.float32)})


@pytest.mark.parametrize("tier", contract.PER_TASK_TIERS, ids=lambda t: contract.TIER_NAMES[t])
def test_tier_configs_take_what_the_gate_sends(tier):
    """The gate's BLS call of a tier names the tier's model, sends inputs its config takes in chunks it batches, and
    asks for PROBS of the task's labels, as the gate's own PROBS."""
    config = read(configgen.tier_spec("news", tier, n_labels=3, embedding_dim=512))
    gate = read(configgen.gate_spec(news_gate().to_parameters(), "news", n_labels=3, embedding_dim=512))
    ((model, inputs, output, chunk),) = gate_call(
        lambda calls, rows: BlsTier(calls, tier).predict_proba(rows, np.arange(2))
    )
    assert model == config.name and chunk <= config.max_batch_size
    assert_takes(config, inputs)
    assert _by_name(config.output)[output] == _by_name(gate.output)[PROBS]
    if tier in contract.EMBEDDING_TIERS:  # the rows' embeddings reach the tier as the gate took them
        assert _kind(_by_name(config.input)[EMBEDDING]) == _kind(_by_name(gate.input)[EMBEDDING])


def test_embedder_config_follows_its_spec_and_takes_what_the_gate_sends():
    config = read(configgen.embedder_spec(num_threads=2, embedding_dim=768, embedder="mpnet"))
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params[contract.CFG_NUM_THREADS] == "2" and params[contract.CFG_EMBEDDER] == "mpnet"
    gate = read(configgen.gate_spec(gate_params(), "sst2", n_labels=2, embedding_dim=768))
    # What the embedder returns is what the gate takes from a client: the same EMBEDDING.
    embedding = _by_name(config.output)[EMBEDDING]
    assert list(embedding.dims) == [768] and _kind(embedding) == _kind(_by_name(gate.input)[EMBEDDING])
    ((model, inputs, output, chunk),) = gate_call(lambda calls, rows: BlsCalls.embed(calls, rows.text(range(2))))
    assert model == config.name and output == EMBEDDING and chunk <= config.max_batch_size
    assert_takes(config, inputs)
    with pytest.raises(ConfigError, match="num_threads must be a positive integer"):
        configgen.embedder_spec(num_threads=0)


def test_llm_tiers_have_no_per_task_model():
    with pytest.raises(ConfigError, match="has no per-task model"):
        configgen.tier_spec("sst2", contract.TIER_LLM_SMALL, 2)


def test_parse_rejects_unknown_fields_and_profiles():
    with pytest.raises(ConfigError, match="invalid config.pbtxt"):
        configgen.parse_config('name: "x"\nmax_batch_sise: 3\n')
    for profile in ("tpu", "gpu"):  # the GPU profile's configs are ProtoSpecs, never a ModelSpec's KIND_CPU
        with pytest.raises(ConfigError, match="unknown profile"):
            configgen.embedder_spec().to_pbtxt(profile=profile)


def test_write_config(tmp_path):
    spec = configgen.embedder_spec()
    path = configgen.write_config(spec, tmp_path)
    assert path == tmp_path / "config.pbtxt"
    assert configgen.parse_config(path.read_text()) == spec.to_proto()


def test_bls_targets_reject_requests_queued_past_the_gates_timeout():
    """Every model the gate calls by BLS rejects a request that waited in its queue longer than the gate's BLS
    timeout (the gate then treats the tier as busy), and lets the gate's per-call timeout shorten that."""
    from cascade.repository.trtllm_config import llm_large_gpu_config

    targets = [
        read(configgen.embedder_spec()),
        *(read(configgen.tier_spec("sst2", tier, 2)) for tier in contract.PER_TASK_TIERS),
        read(configgen.llm_spec(contract.TIER_LLM_SMALL, "smollm2-135m")),
        llm_large_gpu_config("/tok"),
    ]
    gate = GateConfig.from_parameters(gate_params())
    for config in targets:
        policy = config.dynamic_batching.default_queue_policy
        assert policy.timeout_action == mc.ModelQueuePolicy.REJECT, config.name
        assert policy.default_timeout_microseconds == gate.bls_timeout_ms * 1000, config.name
        assert policy.allow_timeout_override, config.name


def test_refresh_backends_copies_each_models_own_glue(tmp_path):
    from cascade.paths import BACKENDS_DIR
    from cascade.repository.trtllm_config import ProtoSpec, cpu_generate_spec, llm_large_gpu_config
    from cascade.repository.writer import GLUE_MARKER, RepositoryWriter, refresh_backends

    repo = tmp_path / "cpu"
    with RepositoryWriter(repo) as writer:
        writer.add(configgen.embedder_spec())
        writer.add(configgen.gate_spec(gate_params(), "sst2", n_labels=2))
        writer.add(configgen.llm_spec(contract.TIER_LLM_SMALL, "smollm2-135m"))
        writer.add(cpu_generate_spec("smollm2-135m"))  # has llm_model too: not the scorer's glue
        writer.add(ProtoSpec.of(llm_large_gpu_config("/tok"), configgen.BACKEND_LLM_TRTLLM))  # the GPU llm_large
    for model in repo.iterdir():
        (model / "1" / "model.py").write_text(
            f"{GLUE_MARKER} an older version\nfrom cascade.gate import decode_texts\n"
        )
    expected = {
        contract.EMBEDDER_MODEL: "onnx_runner",
        "sst2": "gate",
        contract.TIER_NAMES[3]: "llm_scorer",
        contract.LLM_GENERATE_MODEL: "llm_generate",
        contract.TIER_NAMES[4]: "llm_trtllm",
    }
    assert refresh_backends(repo) == sorted(expected)
    for model, source in expected.items():
        assert (repo / model / "1" / "model.py").read_text() == (BACKENDS_DIR / source / "model.py").read_text()
    assert refresh_backends(repo) == []  # only a copy that differs is written
    own = repo / contract.EMBEDDER_MODEL / "1" / "model.py"
    own.write_text('"""A Python model of the user\'s own, in the same repository."""\n')
    assert refresh_backends(repo) == [] and own.read_text().startswith('"""A Python model of the user')
    assert all(p.read_text().startswith(GLUE_MARKER) for p in BACKENDS_DIR.glob("*/model.py"))


def test_ensure_llms_writes_the_streaming_endpoint(tmp_path):
    """The CPU build writes ``llm_generate`` beside the LLM scorers (llama.cpp on the small tier's model), once."""
    from cascade.paths import BACKENDS_DIR
    from cascade_export.build.llm_tiers import ensure_llms

    repo = tmp_path / "cpu"
    ensure_llms(repo)
    names = {contract.TIER_NAMES[contract.TIER_LLM_SMALL], contract.TIER_NAMES[contract.TIER_LLM_LARGE]}
    assert {p.name for p in repo.iterdir()} == names | {contract.LLM_GENERATE_MODEL}
    model = repo / contract.LLM_GENERATE_MODEL

    def params(name):
        config = configgen.parse_config((repo / name / "config.pbtxt").read_text())
        return config, {k: v.string_value for k, v in config.parameters.items()}

    config, generate = params(contract.LLM_GENERATE_MODEL)
    _, small = params(contract.TIER_NAMES[contract.TIER_LLM_SMALL])
    assert config.model_transaction_policy.decoupled and generate[contract.CFG_RUNTIME] == contract.RUNTIME_LLAMA_CPP
    # the small scorer's GGUF in the same context size: one model file serves both
    assert generate[contract.CFG_LLM_MODEL] == small[contract.CFG_LLM_MODEL]
    assert generate[contract.CFG_N_CTX] == small[contract.CFG_N_CTX]
    glue = (BACKENDS_DIR / "llm_generate" / "model.py").read_text()
    assert (model / contract.MODEL_VERSION / "model.py").read_text() == glue
    written = (model / "config.pbtxt").stat().st_mtime_ns
    ensure_llms(repo)  # up to date: nothing rewritten
    assert (model / "config.pbtxt").stat().st_mtime_ns == written
