"""GPU-profile configs of the LLM tiers (``cascade.repository.trtllm_config``), checked without a GPU: each config
survives its
config.pbtxt text and Triton's protobuf, carries its arguments, refuses bad ones, and agrees with the glue that sends
to and reads from it; the GPU repository is written only for an engine that it matches."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc
from trtllm_shared import bpe, minilm, minilm_dir, write_engine_config

from cascade import contract
from cascade.errors import ConfigError, InvalidInput
from cascade.llm.generate_io import GenerateIO
from cascade.llm.prompts import PromptTemplate
from cascade.llm.trtllm import generate_inputs, greedy_mismatch, probs_from_generation_logits, scoring_inputs
from cascade.llm.trtllm_bls import REQUESTED, TrtllmScorer
from cascade.repository import configgen, trtllm_config

REPO_ROOT = Path(__file__).resolve().parents[2]


def as_written(config: mc.ModelConfig) -> mc.ModelConfig:
    """The config as Triton reads it back from its config.pbtxt."""
    return configgen.parse_config(text_format.MessageToString(config))


def as_triton_passes(config: mc.ModelConfig) -> dict:
    """``args["model_config"]`` of a Python model's ``initialize``: the config as JSON, proto field names."""
    return json.loads(json_format.MessageToJson(config, preserving_proto_field_name=True))


def parameters(config: mc.ModelConfig) -> dict[str, str]:
    return {k: v["string_value"] for k, v in as_triton_passes(config).get("parameters", {}).items()}


def _by_name(items):
    return {item.name: item for item in items}


def _fits(shape, dims) -> bool:
    return len(shape) == len(dims) and all(d in (-1, n) for d, n in zip(dims, shape, strict=True))


# --------------------------------------------------------------------------------------------- tensorrt_llm


def test_tensorrt_llm_config_carries_its_arguments():
    """Every knob lands where the tensorrtllm backend reads it, and survives the config.pbtxt text."""
    config = trtllm_config.tensorrt_llm_config(
        "/engines/large",
        max_batch_size=32,
        max_beam_width=2,
        kv_cache_free_gpu_mem_fraction=0.8,
        batching_strategy="V1",
        batch_scheduler_policy="max_utilization",
        enable_kv_cache_reuse=False,
        exclude_input_in_output=False,
        decoupled=False,
        max_queue_delay_us=250,
    )
    read = as_written(config)
    assert read == config
    assert read.max_batch_size == 32 and list(read.dynamic_batching.preferred_batch_size) == [32]
    assert read.dynamic_batching.max_queue_delay_microseconds == 250
    assert not read.model_transaction_policy.decoupled
    assert (
        parameters(read).items()
        >= {
            contract.TRTLLM_CFG_ENGINE_DIR: "/engines/large",
            contract.TRTLLM_CFG_MAX_BEAM_WIDTH: "2",
            contract.TRTLLM_CFG_KV_CACHE_FRACTION: "0.8",
            contract.TRTLLM_CFG_BATCHING_STRATEGY: "V1",
            contract.TRTLLM_CFG_SCHEDULER_POLICY: "max_utilization",
            contract.TRTLLM_CFG_KV_CACHE_REUSE: "false",
            contract.TRTLLM_CFG_EXCLUDE_INPUT: "false",
        }.items()
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batching_strategy": "static"}, "batching_strategy 'static'"),
        ({"batch_scheduler_policy": "greedy"}, "batch_scheduler_policy 'greedy'"),
        ({"kv_cache_free_gpu_mem_fraction": 0.0}, r"kv_cache_free_gpu_mem_fraction must be in \(0, 1\]"),
        ({"kv_cache_free_gpu_mem_fraction": 1.5}, r"kv_cache_free_gpu_mem_fraction must be in \(0, 1\]"),
        ({"max_beam_width": 0}, "max_beam_width and max_batch_size must be at least 1"),
    ],
    ids=["batching-strategy", "scheduler-policy", "kv-fraction-zero", "kv-fraction-above-one", "beam-width-zero"],
)
def test_tensorrt_llm_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        trtllm_config.tensorrt_llm_config("/engines/large", **kwargs)


def test_requests_match_the_tensorrt_llm_config():
    """Every tensor llm_large / llm_generate send is declared with that dtype and shape, and every input the config
    requires is sent (Triton refuses the request otherwise)."""
    config = as_written(trtllm_config.tensorrt_llm_config("/e"))
    inputs = _by_name(config.input)
    required = {name for name, tensor in inputs.items() if not tensor.optional}
    dtypes = {mc.TYPE_INT32: np.int32, mc.TYPE_BOOL: np.bool_}
    for request in (scoring_inputs([5, 6, 7], end_id=2, pad_id=0), generate_inputs([5, 6], 16, end_id=2)):
        assert required <= set(request), required - set(request)
        for name, value in request.items():
            assert name in inputs, name
            assert value.dtype == dtypes[inputs[name].data_type], name
            assert value.shape[0] == 1, name  # one row per request: the engine batches requests in flight
            assert _fits(value.shape[1:], inputs[name].dims), (name, value.shape, list(inputs[name].dims))
    scoring = scoring_inputs([5, 6, 7])
    assert scoring[contract.TRTLLM_REQUEST_OUTPUT_LEN.name].tolist() == [[1]]
    assert scoring[contract.TRTLLM_RETURN_GENERATION_LOGITS.name].tolist() == [[True]]
    assert scoring[contract.TRTLLM_INPUT_LENGTHS.name].tolist() == [[3]]
    # A stream is several responses to one request: Triton allows that of a decoupled model only.
    assert generate_inputs([5], 16)[contract.TRTLLM_STREAMING.name].tolist() == [[True]]
    assert config.model_transaction_policy.decoupled
    with pytest.raises(InvalidInput, match="empty input_ids"):
        scoring_inputs([])


def test_the_glue_reads_outputs_the_config_declares():
    """What llm_large asks of tensorrt_llm is declared, and a response shaped as declared is scored."""
    outputs = _by_name(as_written(trtllm_config.tensorrt_llm_config("/e")).output)
    assert set(REQUESTED) <= set(outputs)
    logits, ids = outputs[contract.TRTLLM_GENERATION_LOGITS.name], outputs[contract.TRTLLM_OUTPUT_IDS.name]
    assert logits.data_type == mc.TYPE_FP32 and ids.data_type == mc.TYPE_INT32
    # One response: batch 1, then the declared dims -- [beams, steps, vocab] and [beams, tokens].
    response_logits = np.zeros((1, *(size for _, size in zip(logits.dims, (1, 2, 10), strict=True))), np.float32)
    response_logits[0, 0, 0, 5] = 2.0
    response_ids = np.full((1, *(size for _, size in zip(ids.dims, (1, 1), strict=True))), 5, np.int32)
    probs = probs_from_generation_logits(response_logits, [5, 7])
    np.testing.assert_allclose(probs[0], np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum(), rtol=1e-6)
    assert not greedy_mismatch(response_logits, response_ids).any()


# --------------------------------------------------------------------------------------------- llm_large, llm_generate


def test_llm_large_gpu_keeps_the_cpu_contract():
    """The gate calls llm_large alike on both profiles; the GPU glue reads back the settings it was written with and
    calls the tensorrt_llm model of the same repository."""
    gpu = as_written(
        trtllm_config.llm_large_gpu_config(minilm_dir(), max_input_len=512, calibrate=False, instance_count=2)
    )
    cpu = configgen.llm_spec(contract.TIER_LLM_LARGE, "gemma3-270m").to_proto()
    assert gpu.name == cpu.name
    assert list(gpu.input) == list(cpu.input) and list(gpu.output) == list(cpu.output)
    assert gpu.max_batch_size == cpu.max_batch_size
    # The gate's BLS timeout bounds the queue of either scorer alike.
    assert gpu.dynamic_batching.default_queue_policy == cpu.dynamic_batching.default_queue_policy
    assert [g.count for g in gpu.instance_group] == [2]
    scorer = TrtllmScorer(SimpleNamespace(), parameters(gpu))
    assert scorer.max_input_len == 512 and scorer.calibrate is False
    assert scorer.trtllm_model == trtllm_config.tensorrt_llm_config("/e").name
    assert scorer.tokenizer.encode("a gripping film") == minilm().encode("a gripping film")
    with pytest.raises(ConfigError, match="max_input_len must be positive"):
        trtllm_config.llm_large_gpu_config("/tok", max_input_len=0)


GENERATE_RUNTIMES = {
    contract.RUNTIME_LLAMA_CPP: (
        {"llm_model": "smollm2-135m", "n_ctx": 2048, "num_threads": 3},
        {contract.CFG_LLM_MODEL: "smollm2-135m", contract.CFG_N_CTX: "2048", contract.CFG_NUM_THREADS: "3"},
    ),
    contract.RUNTIME_TRTLLM: (
        {"tokenizer_dir": "/tok", "max_input_len": 512, "trtllm_model": "engine_b"},
        {contract.CFG_TOKENIZER_DIR: "/tok", contract.CFG_MAX_INPUT_LEN: "512", contract.CFG_TRTLLM_MODEL: "engine_b"},
    ),
}


@pytest.mark.parametrize("runtime", GENERATE_RUNTIMES)
def test_llm_generate_config_carries_what_its_runtime_needs(runtime):
    kwargs, expected = GENERATE_RUNTIMES[runtime]
    config = as_written(trtllm_config.llm_generate_config(runtime, default_max_tokens=7, max_tokens_limit=9, **kwargs))
    # Exactly its runtime's settings: nothing of the other runtime.
    assert parameters(config) == {
        contract.CFG_RUNTIME: runtime,
        contract.CFG_DEFAULT_MAX_TOKENS: "7",
        contract.CFG_MAX_TOKENS_LIMIT: "9",
        **expected,
    }
    # One request streams several responses: Triton allows that of a decoupled model only.
    assert config.model_transaction_policy.decoupled


def test_llm_generate_glue_applies_its_config():
    """The GPU llm_generate's glue reads back what the config was written with, and its token budget governs the
    requests: the default when a request has none, a budget above the limit refused."""
    config = trtllm_config.llm_generate_config(
        contract.RUNTIME_TRTLLM, tokenizer_dir=minilm_dir(), max_input_len=512, default_max_tokens=7, max_tokens_limit=9
    )
    pb = SimpleNamespace(get_input_tensor_by_name=lambda request, name: request.get(name))
    io = GenerateIO(pb, as_triton_passes(as_written(config)))
    assert (io.max_input_len, io.trtllm_model) == (512, trtllm_config.tensorrt_llm_config("/e").name)

    def tensor(value):
        return SimpleNamespace(as_numpy=lambda: np.array(value))

    prompt = {contract.PROMPT_TEXT.name: tensor([[b"Once upon a time"]])}
    assert io.parse(prompt).max_tokens == 7
    assert io.parse(prompt | {contract.MAX_TOKENS.name: tensor([[9]])}).max_tokens == 9
    with pytest.raises(InvalidInput, match="between 1 and 9"):
        io.parse(prompt | {contract.MAX_TOKENS.name: tensor([[10]])})


def test_llm_generate_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="unknown runtime 'vllm'"):
        trtllm_config.llm_generate_config("vllm", llm_model="x")
    with pytest.raises(ConfigError, match="needs tokenizer_dir"):
        trtllm_config.llm_generate_config(contract.RUNTIME_TRTLLM)
    with pytest.raises(ConfigError, match="default_max_tokens"):
        trtllm_config.llm_generate_config(contract.RUNTIME_LLAMA_CPP, llm_model="x", default_max_tokens=0)


# --------------------------------------------------------------------------------------------- the GPU repository


def test_write_gpu_llm_models(tmp_path):
    engine = write_engine_config(tmp_path / "engine", tp=2)
    repo = tmp_path / "gpu"
    template = PromptTemplate("Review: {text}\nSentiment:", ("negative", "positive"))
    names = trtllm_config.write_gpu_llm_models(
        repo, engine, minilm_dir(), tp_size=2, max_input_len=1024, templates=[template]
    )
    assert names == [contract.TRTLLM_MODEL, "llm_large", contract.LLM_GENERATE_MODEL]
    assert list((repo / contract.TRTLLM_MODEL / "1").iterdir()) == []  # the tensorrtllm backend needs no model.py
    assert (repo / "llm_large" / "1" / "model.py").read_text() == (
        REPO_ROOT / "python_backends" / "llm_trtllm" / "model.py"
    ).read_text()
    assert (repo / contract.LLM_GENERATE_MODEL / "1" / "model.py").is_file()
    for name in names:
        config = configgen.parse_config((repo / name / "config.pbtxt").read_text())
        assert config.name == name
    assert not list(tmp_path.glob(".gpu.staging-*"))


@pytest.mark.parametrize(
    "engine_kwargs, message",
    [
        ({"tp": 4}, "tp=4"),
        ({"max_input_len": 512}, "max_input_len"),
        ({"gather": False}, "gather_generation_logits"),
        ({"logits_dtype": "float16"}, "logits_dtype"),
    ],
)
def test_write_gpu_llm_models_checks_the_engine(tmp_path, engine_kwargs, message):
    engine = write_engine_config(tmp_path / "engine", **engine_kwargs)
    with pytest.raises(ConfigError, match=message):
        trtllm_config.write_gpu_llm_models(tmp_path / "gpu", engine, minilm_dir(), tp_size=2, max_input_len=1024)
    assert not (tmp_path / "gpu" / contract.TRTLLM_MODEL).exists()


def test_write_gpu_llm_models_rejects_verbalizations_sharing_a_first_token(tmp_path):
    tok_dir = tmp_path / "tokenizer"
    tok_dir.mkdir()
    bpe().save(str(tok_dir / "tokenizer.json"))
    template = PromptTemplate("Review: {text} Sentiment:", ("very negative", "very positive"))
    with pytest.raises(ConfigError, match="same token"):
        trtllm_config.write_gpu_llm_models(tmp_path / "gpu", tmp_path / "engine", tok_dir, templates=[template])
