"""The engine build of the large tier (``trtllm_engine``), checked without a GPU: the two commands follow
the build's settings, the engine they describe passes the serving side's checks, and bad parallelism or arguments
are refused with a message."""

import json
from dataclasses import replace

import pytest
from trtllm_shared import minilm_dir, write_engine_config

from cascade import contract
from cascade.errors import ConfigError
from cascade.repository import trtllm_config
from cascade_export.build import trtllm_engine


def _hf_dir(tmp_path, **config):
    base = {"model_type": "llama", "num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": 80}
    path = tmp_path / "hf"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(base | config))
    return path


def _flag(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_engine_commands_follow_the_build(tmp_path):
    build = trtllm_engine.EngineBuild(
        model_dir=_hf_dir(tmp_path),
        out=tmp_path / "engine",
        tp=8,
        pp=2,
        dtype="float16",
        max_input_len=3072,
        max_output_len=128,
        max_batch_size=32,
        examples_dir=tmp_path / "examples",
    )
    convert, engine = trtllm_engine.commands(build)
    # the example of config.json's model_type (llama), in the current layout when no checkout says otherwise
    assert convert[1] == str(tmp_path / "examples" / "models" / "core" / "llama" / "convert_checkpoint.py")
    assert _flag(convert, "--model_dir") == str(build.model_dir)
    assert (_flag(convert, "--tp_size"), _flag(convert, "--pp_size"), _flag(convert, "--dtype")) == (
        "8",
        "2",
        "float16",
    )
    # trtllm-build compiles the checkpoint that the conversion writes (beside the engine unless told otherwise)
    assert _flag(engine, "--checkpoint_dir") == _flag(convert, "--output_dir") == str(tmp_path / "engine.ckpt")
    assert _flag(engine, "--output_dir") == str(build.out)
    assert _flag(engine, "--max_input_len") == "3072" and _flag(engine, "--max_seq_len") == "3200"  # input + output
    assert _flag(engine, "--max_batch_size") == "32" and _flag(engine, "--workers") == "16"  # one per rank: tp x pp
    assert "--tp_size" not in engine  # parallelism lives in the converted checkpoint
    # paged context FMHA is what lets the backend reuse the KV cache of a shared prompt prefix
    assert _flag(engine, "--use_paged_context_fmha") == "enable"
    assert "--use_paged_context_fmha" not in trtllm_engine.commands(replace(build, kv_cache_reuse=False))[1]


def test_the_built_engine_passes_the_serving_checks(tmp_path):
    """The config.json that trtllm-build writes for these flags is one that write_gpu_llm_models accepts: the same
    tp x pp and max_input_len, generation logits gathered, in FP32."""
    build = trtllm_engine.EngineBuild(
        model_dir=_hf_dir(tmp_path), out=tmp_path / "engine", tp=4, pp=2, max_input_len=1024, examples_dir=tmp_path
    )
    convert, engine = trtllm_engine.commands(build)
    write_engine_config(
        build.out,
        tp=int(_flag(convert, "--tp_size")),
        pp=int(_flag(convert, "--pp_size")),
        max_input_len=int(_flag(engine, "--max_input_len")),
        gather="--gather_generation_logits" in engine,
        logits_dtype=_flag(engine, "--logits_dtype"),
    )
    names = trtllm_config.write_gpu_llm_models(
        tmp_path / "gpu", build.out, minilm_dir(), tp_size=4, pp_size=2, max_input_len=1024
    )
    assert contract.TRTLLM_MODEL in names


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
    with pytest.raises(ConfigError, match="--tp must be at least 1"):
        trtllm_engine.EngineBuild(model_dir=tmp_path, out=tmp_path / "e", tp=0)
    with pytest.raises(ConfigError, match="--dtype 'int4'"):
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
