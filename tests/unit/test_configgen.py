"""config.pbtxt generation from the typed spec, checked with Triton's model_config protobuf."""

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from cascade import configgen, contract
from cascade.errors import ConfigError
from cascade.gate import GateConfig


def gate_params():
    return GateConfig("sst2", ("negative", "positive"), (0, 1, 2), {0: 0.9, 1: 0.8}).to_parameters()


def test_gate_config_matches_the_contract():
    spec = configgen.gate_spec(gate_params(), "sst2", n_labels=2)
    config = configgen.parse_config(spec.to_pbtxt())
    assert config.name == contract.gate_model_name("sst2")
    assert config.backend == "python"
    inputs = {i.name: i for i in config.input}
    outputs = {o.name: o for o in config.output}
    assert set(inputs) == {contract.TEXT.name, contract.EMBEDDING.name}
    # TEXT may be left out when EMBEDDING keeps the rows on the embedding tiers (checked by the gate).
    assert inputs[contract.EMBEDDING.name].optional and inputs[contract.TEXT.name].optional
    assert list(inputs[contract.EMBEDDING.name].dims) == [contract.EMBEDDING_DIM]
    assert inputs[contract.TEXT.name].data_type == mc.TYPE_STRING
    assert inputs[contract.TEXT.name].HasField("reshape")  # per-row scalar: the model sees [batch]
    assert set(outputs) == {"LABEL", "CONFIDENCE", "TIER", "PROBS", "DEGRADED"}
    assert outputs[contract.TIER.name].data_type == mc.TYPE_INT32
    assert outputs[contract.DEGRADED.name].data_type == mc.TYPE_BOOL
    assert list(outputs[contract.PROBS.name].dims) == [2]
    assert config.HasField("dynamic_batching")
    assert GateConfig.from_parameters({k: v.string_value for k, v in config.parameters.items()}).tiers == (
        0,
        1,
        2,
    )


@pytest.mark.parametrize("tier, input_name", [(0, "EMBEDDING"), (1, "EMBEDDING"), (2, "TEXT")])
def test_tier_configs(tier, input_name):
    spec = configgen.tier_spec("ag_news", tier, n_labels=4)
    config = configgen.parse_config(spec.to_pbtxt())
    assert config.name == f"ag_news_{contract.TIER_NAMES[tier]}"
    assert [i.name for i in config.input] == [input_name]
    assert [(o.name, list(o.dims)) for o in config.output] == [("PROBS", [4])]
    assert config.max_batch_size == contract.DEFAULT_MAX_BATCH_SIZE
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_embedder_config():
    config = configgen.parse_config(configgen.embedder_spec().to_pbtxt())
    assert config.name == contract.EMBEDDER_MODEL
    assert [(o.name, list(o.dims)) for o in config.output] == [("EMBEDDING", [contract.EMBEDDING_DIM])]


def test_llm_tiers_have_no_per_task_model():
    with pytest.raises(ConfigError):
        configgen.tier_spec("sst2", contract.TIER_LLM_SMALL, 2)


def test_parse_rejects_unknown_fields_and_profiles():
    with pytest.raises(ConfigError, match="invalid config.pbtxt"):
        configgen.parse_config('name: "x"\nmax_batch_sise: 3\n')
    for profile in ("tpu", "gpu"):  # the GPU profile's configs are ProtoSpecs, never a ModelSpec's KIND_CPU
        with pytest.raises(ConfigError, match="unknown profile"):
            configgen.embedder_spec().to_pbtxt(profile=profile)


def test_write_config(tmp_path):
    path = configgen.write_config(configgen.embedder_spec(), tmp_path)
    assert configgen.parse_config(path.read_text()).name == contract.EMBEDDER_MODEL


def test_tiers_reject_requests_queued_past_the_bls_timeout():
    config = configgen.parse_config(configgen.tier_spec("sst2", 0, 2).to_pbtxt())
    policy = config.dynamic_batching.default_queue_policy
    assert policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert policy.default_timeout_microseconds == contract.DEFAULT_BLS_TIMEOUT_MS * 1000
    assert policy.allow_timeout_override  # the gate's BLS timeout may shorten it


def test_refresh_backends_copies_each_models_own_glue(tmp_path):
    from cascade.export.repository import BACKENDS_DIR, RepositoryWriter, refresh_backends
    from cascade.trtllm_config import ProtoSpec, cpu_generate_spec, llm_large_gpu_config

    repo = tmp_path / "cpu"
    with RepositoryWriter(repo) as writer:
        writer.add(configgen.embedder_spec())
        writer.add(configgen.gate_spec(gate_params(), "sst2", n_labels=2))
        writer.add(configgen.llm_spec(contract.TIER_LLM_SMALL, "smollm2-135m"))
        writer.add(cpu_generate_spec("smollm2-135m"))  # has llm_model too: not the scorer's glue
        writer.add(ProtoSpec.of(llm_large_gpu_config("/tok"), configgen.BACKEND_LLM_TRTLLM))  # the GPU llm_large
    for model in repo.iterdir():
        (model / "1" / "model.py").write_text("stale")
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


def test_ensure_llms_writes_the_streaming_endpoint(tmp_path):
    """The CPU build writes ``llm_generate`` beside the LLM scorers (llama.cpp on the small tier's model), once."""
    from cascade.export.build import LLM_N_CTX, LLM_ROLES, ensure_llms
    from cascade.export.repository import BACKENDS_DIR

    repo = tmp_path / "cpu"
    ensure_llms(repo)
    names = {contract.TIER_NAMES[contract.TIER_LLM_SMALL], contract.TIER_NAMES[contract.TIER_LLM_LARGE]}
    assert {p.name for p in repo.iterdir()} == names | {contract.LLM_GENERATE_MODEL}
    model = repo / contract.LLM_GENERATE_MODEL
    config = configgen.parse_config((model / "config.pbtxt").read_text())
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert config.model_transaction_policy.decoupled and params[contract.CFG_RUNTIME] == contract.RUNTIME_LLAMA_CPP
    assert params[contract.CFG_LLM_MODEL] == LLM_ROLES[contract.TIER_LLM_SMALL]
    assert params[contract.CFG_N_CTX] == str(LLM_N_CTX)
    glue = (BACKENDS_DIR / "llm_generate" / "model.py").read_text()
    assert (model / contract.MODEL_VERSION / "model.py").read_text() == glue
    written = (model / "config.pbtxt").stat().st_mtime_ns
    ensure_llms(repo)  # up to date: nothing rewritten
    assert (model / "config.pbtxt").stat().st_mtime_ns == written
