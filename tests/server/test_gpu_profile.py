"""The GPU profile's gate path, run on the CPU: the gate with torch arrays (``placement: torch:cpu``) must answer
exactly as the NumPy gate does, through the real server.

On a GPU the same code takes the request's EMBEDDING and the tiers' PROBS by DLPack on the device; here the
tensors are torch tensors on the host, which exercises the same glue: DLPack in and out of Triton tensors,
BLS inputs made from torch tensors, the logreg tier as torch ops, the row selection as torch ops.
"""

import numpy as np
import pytest

from cascade import contract
from cascade_client import CascadeClient


@pytest.fixture(scope="module")
def rows(sst2_task):
    from cascade.tasks import load_split

    texts, _ = load_split(sst2_task, "validation", limit=48)
    return texts


def answers(url: str, task: str, texts, embeddings):
    """Rows sent with embeddings (first half) and without (second half, embedded by the server), held to the
    embedding tiers and the encoder (no LLM: time)."""
    half = len(texts) // 2
    with CascadeClient(url) as client:
        with_emb = client.classify_arrays(task, texts[:half], embeddings[:half], max_tier="encoder")
        text_only = client.classify_arrays(task, texts[half:], max_tier="encoder")
        free = client.classify_arrays(task, None, embeddings, max_tier="xgboost")  # no TEXT at all
    return [(r.probs, r.tier) for r in (with_emb, text_only, free)]


@pytest.mark.server
@pytest.mark.parametrize("inline", [True, False], ids=["inline-tiers", "bls-tiers"])
def test_the_gate_on_torch_arrays_answers_as_the_numpy_gate(explicit_server, reconfigure, sst2_task, rows, inline):
    task = sst2_task.name
    with CascadeClient(explicit_server.grpc_url) as client:
        embeddings = client.embed(rows)
    baseline = answers(explicit_server.grpc_url, task, rows, embeddings)
    # Without inline tiers, logreg and xgboost are BLS calls whose EMBEDDING input is made from a torch tensor
    # by DLPack and whose PROBS come back as torch tensors.
    changes = {contract.CFG_PLACEMENT: "torch:cpu"}
    if not inline:
        changes[contract.CFG_INLINE_TIERS] = None
    with reconfigure(task, **changes):
        torch_answers = answers(explicit_server.grpc_url, task, rows, embeddings)
    tiers_seen = set()
    for (want_probs, want_tier), (got_probs, got_tier) in zip(baseline, torch_answers, strict=True):
        np.testing.assert_array_equal(got_tier, want_tier)
        np.testing.assert_allclose(got_probs, want_probs, atol=1e-5)
        tiers_seen |= set(want_tier.tolist())
    assert len(tiers_seen) >= 2  # more than one tier answered: the row selection was exercised


# --- the GPU profile's repository (item 1): generated from the built CPU one, checked without a GPU -----------
@pytest.fixture(scope="module")
def gpu_repo(built_repo, tmp_path_factory):
    from cascade.repository.gpu_profile import write_gpu_repository

    repo, _ = built_repo
    out = tmp_path_factory.mktemp("profiles") / "gpu"
    names = write_gpu_repository(repo, out, ["sst2"])
    return out, names


def _configs(repo):
    from cascade.repository.configgen import parse_config

    return {p.parent.name: parse_config(p.read_text()) for p in sorted(repo.glob("*/config.pbtxt"))}


@pytest.mark.server
def test_every_gpu_config_parses_and_every_ensemble_is_wired(gpu_repo):
    repo, names = gpu_repo
    configs = _configs(repo)
    assert sorted(configs) == sorted(names)
    for name, config in configs.items():
        if config.platform != "ensemble":
            continue
        produced = {t.name for t in config.input}
        for step in config.ensemble_scheduling.step:
            model = configs[step.model_name]  # every step names a model of the repository
            assert set(step.input_map) <= {t.name for t in model.input}, (name, step.model_name)
            assert set(step.input_map.values()) <= produced, (name, step.model_name)
            assert set(step.output_map) <= {t.name for t in model.output}, (name, step.model_name)
            produced |= set(step.output_map.values())
        assert {t.name for t in config.output} <= produced, name


@pytest.mark.server
def test_gpu_models_run_where_they_should_with_tensorrt_and_fil(gpu_repo, built_repo):
    from tritonclient.grpc import model_config_pb2 as mc

    from cascade.gate.config import GateConfig
    from cascade.repository.gpu_profile import FIL_INPUT, TRT_PARAMETERS, onnx_graph_io

    repo, _ = gpu_repo
    configs = _configs(repo)
    gpu, cpu = mc.ModelInstanceGroup.KIND_GPU, mc.ModelInstanceGroup.KIND_CPU
    for name in ("embedder_onnx", "sst2_logreg", "sst2_encoder_onnx"):
        config = configs[name]
        assert config.backend == "onnxruntime" and config.instance_group[0].kind == gpu
        (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert trt.name == "tensorrt" and dict(trt.parameters) == TRT_PARAMETERS
        inputs, outputs = onnx_graph_io(repo / name / "1" / "model.onnx")  # the config names the graph's tensors
        assert [t.name for t in config.input] == [i[0] for i in inputs]
        assert [t.name for t in config.output] == [o[0] for o in outputs]
    assert configs["sst2_logreg"].input[0].name == contract.EMBEDDING.name  # the gate's BLS contract holds
    fil = configs["sst2_xgboost_fil"]
    assert fil.backend == "fil" and fil.instance_group[0].kind == gpu and fil.input[0].name == FIL_INPUT
    params = {k: v.string_value for k, v in fil.parameters.items()}
    assert params["model_type"] == "xgboost_json" and params["predict_proba"] == "true"
    assert (repo / "sst2_xgboost_fil" / "1" / "xgboost.json").is_file()
    for name in ("embedder_tokenize", "sst2_encoder_tokenize", "llm_small"):
        assert configs[name].instance_group[0].kind == cpu  # tokenizers and llama.cpp stay on the CPU
    gate = configs["sst2"]
    assert gate.instance_group[0].kind == gpu
    params = {k: v.string_value for k, v in gate.parameters.items()}
    assert params[contract.FORCE_CPU_ONLY_INPUT_TENSORS] == "no"
    parsed = GateConfig.from_parameters(params)
    assert parsed.inline_tiers == (contract.TIER_LOGREG,) and parsed.device("GPU", 0) == "cuda:0"
    cpu_gate = _configs(built_repo[0])["sst2"]
    cpu_params = GateConfig.from_parameters({k: v.string_value for k, v in cpu_gate.parameters.items()})
    assert (parsed.tiers, parsed.thresholds, parsed.prompts) == (
        cpu_params.tiers,
        cpu_params.thresholds,
        cpu_params.prompts,
    )


@pytest.mark.server
def test_the_tokenizer_step_runs_in_the_real_server(gpu_repo, tmp_path):
    """The one Python model of the GPU ensembles that this machine's Triton can serve on its own: TEXT in, the
    token arrays the ONNX text model takes out, equal to what the CPU profile feeds ONNX Runtime."""
    import shutil

    import tritonclient.grpc as grpcclient

    from cascade.repository.writer import GLUE_MARKER, refresh_backends
    from cascade.runtime.onnx_runner import TextTokenizer
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports
    from cascade_client.grpc_client import text_inputs

    repo, _ = gpu_repo
    solo = tmp_path / "solo"
    shutil.copytree(repo / "embedder_tokenize", solo / "embedder_tokenize")
    (solo / "embedder_tokenize" / "1" / "model.py").write_text(f"{GLUE_MARKER} an older version\n")
    assert refresh_backends(solo) == ["embedder_tokenize"]  # recognised as the tokenizer's glue
    assert (solo / "embedder_tokenize" / "1" / "model.py").read_text().startswith('"""Triton glue for the GPU profile')
    http, grpc, metrics = free_ports(3)
    texts = ["a gripping film", "dull", "a long review " * 500]
    with TritonServer(ServerOptions(repository=solo, http_port=http, grpc_port=grpc, metrics_port=metrics)) as srv:
        with grpcclient.InferenceServerClient(srv.grpc_url) as c:
            result = c.infer("embedder_tokenize", text_inputs(texts))
    want = TextTokenizer(repo / "embedder_tokenize" / "1" / "tokenizer.json")(texts)
    for name, array in want.items():
        np.testing.assert_array_equal(result.as_numpy(name), array)
    assert want["input_ids"].shape == (3, 256)  # cut to the window, padded to the longest row


def test_a_cpu_repository_without_tasks_is_refused(tmp_path):
    from cascade.errors import ConfigError
    from cascade.repository.gpu_profile import write_gpu_repository

    with pytest.raises(ConfigError, match="holds no task"):
        write_gpu_repository(tmp_path, tmp_path / "gpu")
