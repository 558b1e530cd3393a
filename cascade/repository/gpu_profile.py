"""The GPU profile of the model repository, generated from the built CPU profile (``cascade export --profile gpu``).

Same models, same tensor names and the same gate parameters; GPU backends where Triton has them:

- **the gate** (Python backend) on a GPU instance with ``FORCE_CPU_ONLY_INPUT_TENSORS: no``: it gates on its GPU
  (``cascade.gate.arrays``), the logreg tier inline as torch ops there;
- **tier 0** (logreg) and the **ONNX text models** (the embedder, each task's encoder) on Triton's
  ``onnxruntime`` backend with the TensorRT execution accelerator in FP16 (ONNX Runtime falls back to CUDA for
  what TensorRT cannot run). A text model is an ensemble: ``<name>_tokenize`` (Python, CPU) then
  ``<name>_onnx``, so callers still send TEXT;
- **tier 1** (XGBoost) on the FIL backend: ensemble ``<task>_xgboost`` maps EMBEDDING/PROBS onto FIL's
  ``input__0``/``output__0`` of ``<task>_xgboost_fil`` (the booster's JSON, ``predict_proba``);
- **the LLM tiers**: ``llm_large`` on TensorRT-LLM when an engine is given (``cascade.repository.trtllm_config``), else
the
  CPU profile's llama.cpp scorer, as ``llm_small`` stays.

**Unverified on a GPU**: these configs are validated against Triton's protobuf and cross-checked (ensemble
wiring, ONNX graph names) in the tests; no session with a GPU has served them yet.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
from tritonclient.grpc import model_config_pb2 as mc

from cascade import contract, embedders
from cascade.errors import ConfigError
from cascade.gate.config import GateConfig
from cascade.repository.configgen import parse_config
from cascade.repository.trtllm_config import ProtoSpec
from cascade.repository.writer import BACKEND_TOKENIZER, XGBOOST_JSON
from cascade.runtime.onnx_runner import TOKEN_INPUTS, TOKENIZER_FILE

PROFILE = "gpu"
TOKENIZE_SUFFIX, ONNX_SUFFIX, FIL_SUFFIX = "_tokenize", "_onnx", "_fil"
FIL_INPUT, FIL_OUTPUT = "input__0", "output__0"
#: ONNX Runtime's TensorRT accelerator: FP16, 1 GiB of workspace, engines cached across restarts.
TRT_PARAMETERS = {
    "precision_mode": "FP16",
    "max_workspace_size_bytes": str(1 << 30),
    "trt_engine_cache_enable": "1",
    "trt_engine_cache_path": "/tmp/trt-engine-cache",
}
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.INT64: mc.TYPE_INT64}


def _io(items, name: str, data_type: int, dims: list[int], scalar: bool = False):
    item = items.add(name=name, data_type=data_type, dims=dims)
    if scalar:  # per-row scalar: [batch, 1] on the wire, the model sees [batch]
        item.reshape.SetInParent()
    return item


def _gpu_instance(config: mc.ModelConfig, count: int = 1) -> None:
    del config.instance_group[:]
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=count)


def onnx_graph_io(path: Path) -> tuple[list[tuple[str, int, list[int]]], list[tuple[str, int, list[int]]]]:
    """(name, Triton dtype, dims without the batch dimension) of an ONNX graph's inputs and outputs."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def describe(values):
        out = []
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            if tensor.elem_type not in _ONNX_DTYPES:
                raise ConfigError(f"{path}: {value.name} has ONNX type {tensor.elem_type}, not FP32 or INT64")
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim][1:]
            out.append((value.name, _ONNX_DTYPES[tensor.elem_type], dims))
        return out

    return describe(graph.input), describe(graph.output)


def onnx_gpu_config(
    name: str, onnx_path: Path, max_batch_size: int = contract.DEFAULT_MAX_BATCH_SIZE
) -> mc.ModelConfig:
    """An ONNX model on Triton's onnxruntime backend, on the GPU, through TensorRT in FP16."""
    config = mc.ModelConfig(name=name, backend="onnxruntime", max_batch_size=max_batch_size)
    inputs, outputs = onnx_graph_io(onnx_path)
    for tensor in inputs:
        _io(config.input, *tensor)
    for tensor in outputs:
        _io(config.output, *tensor)
    _gpu_instance(config)
    config.dynamic_batching.SetInParent()
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    for key, value in TRT_PARAMETERS.items():
        accelerator.parameters[key] = value
    return config


def tokenizer_config(name: str, token_inputs: list[str], max_batch_size: int = contract.DEFAULT_MAX_BATCH_SIZE):
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    _io(config.input, contract.TEXT.name, mc.TYPE_STRING, [1], scalar=True)
    for token in token_inputs:
        _io(config.output, token, mc.TYPE_INT64, [-1])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    return config


def ensemble_config(name: str, inputs, outputs, steps, max_batch_size: int = contract.DEFAULT_MAX_BATCH_SIZE):
    """``steps``: (model, {model input: ensemble tensor}, {model output: ensemble tensor})."""
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch_size)
    for tensor in inputs:
        _io(config.input, *tensor)
    for tensor in outputs:
        _io(config.output, *tensor)
    for model, input_map, output_map in steps:
        step = config.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        step.input_map.update(input_map)
        step.output_map.update(output_map)
    return config


def fil_config(
    name: str,
    n_labels: int,
    max_batch_size: int = contract.DEFAULT_MAX_BATCH_SIZE,
    embedding_dim: int = contract.EMBEDDING_DIM,
) -> mc.ModelConfig:
    """XGBoost on the FIL backend (RAPIDS forest inference), class probabilities out."""
    config = mc.ModelConfig(name=name, backend="fil", max_batch_size=max_batch_size)
    _io(config.input, FIL_INPUT, mc.TYPE_FP32, [embedding_dim])
    _io(config.output, FIL_OUTPUT, mc.TYPE_FP32, [n_labels])
    _gpu_instance(config)
    config.dynamic_batching.SetInParent()
    for key, value in {
        "model_type": "xgboost_json",
        "output_class": "true",
        "predict_proba": "true",
        "threshold": "0.5",
        "storage_type": "AUTO",
    }.items():
        config.parameters[key].string_value = value
    return config


def gate_gpu_config(cpu_config: mc.ModelConfig) -> mc.ModelConfig:
    """The task's gate on a GPU instance: tensors stay on the device; only the linear tier runs inline (as
    torch ops); the other embedding tiers are BLS calls to their GPU models."""
    config = mc.ModelConfig()
    config.CopyFrom(cpu_config)
    params = {k: v.string_value for k, v in config.parameters.items()}
    gate = GateConfig.from_parameters(params)
    inline = tuple(t for t in gate.inline_tiers if t == contract.TIER_LOGREG)
    gpu = GateConfig(**{**vars(gate), "inline_tiers": inline, "placement": contract.PLACEMENT_AUTO})
    config.ClearField("parameters")
    for key, value in gpu.to_parameters().items():
        config.parameters[key].string_value = value
    config.parameters[contract.FORCE_CPU_ONLY_INPUT_TENSORS].string_value = "no"
    _gpu_instance(config, count=cpu_config.instance_group[0].count if cpu_config.instance_group else 1)
    return config


def _text_model(writer, name: str, source_dir: Path) -> list[str]:
    """``name`` as tokenize -> ONNX Runtime (TensorRT) ensemble, from a CPU-profile text model folder."""
    onnx_path = source_dir / contract.MODEL_VERSION / "model.onnx"
    tokenizer = source_dir / contract.MODEL_VERSION / TOKENIZER_FILE
    onnx_name, tokenize_name = name + ONNX_SUFFIX, name + TOKENIZE_SUFFIX
    onnx_cfg = onnx_gpu_config(onnx_name, onnx_path)
    tokens = [i.name for i in onnx_cfg.input]
    if "input_ids" not in tokens or set(tokens) - set(TOKEN_INPUTS):
        raise ConfigError(f"{onnx_path}: a text model takes {TOKEN_INPUTS}, the graph declares {tokens}")
    (output,) = onnx_cfg.output
    shutil.copy2(onnx_path, writer.add(ProtoSpec.of(onnx_cfg)) / "model.onnx")
    shutil.copy2(
        tokenizer, writer.add(ProtoSpec.of(tokenizer_config(tokenize_name, tokens), BACKEND_TOKENIZER)) / TOKENIZER_FILE
    )
    writer.add(
        ProtoSpec.of(
            ensemble_config(
                name,
                [(contract.TEXT.name, mc.TYPE_STRING, [1], True)],
                [(output.name, output.data_type, list(output.dims))],
                [
                    (tokenize_name, {contract.TEXT.name: contract.TEXT.name}, {t: t for t in tokens}),
                    (onnx_name, {t: t for t in tokens}, {output.name: output.name}),
                ],
            )
        )
    )
    return [tokenize_name, onnx_name, name]


def _gates(cpu_repo: Path) -> dict[str, mc.ModelConfig]:
    """The task gates of a CPU-profile repository, by task name."""
    gates = {}
    for config_path in sorted(Path(cpu_repo).glob("*/config.pbtxt")):
        config = parse_config(config_path.read_text())
        if config.backend == "python" and contract.CFG_TIERS in config.parameters:
            gates[config.name] = config
    return gates


def write_gpu_repository(
    cpu_repo: Path,
    gpu_repo: Path,
    tasks: list[str] | None = None,
    trtllm_engine_dir: str | None = None,
    trtllm_tokenizer_dir: str | None = None,
) -> list[str]:
    """Write the GPU profile of ``tasks`` (default: every task of ``cpu_repo``) into ``gpu_repo``, atomically."""
    from cascade.repository.trtllm_config import write_gpu_llm_models
    from cascade.repository.writer import RepositoryWriter

    cpu_repo, gpu_repo = Path(cpu_repo), Path(gpu_repo)
    gates = _gates(cpu_repo)
    if not gates:
        raise ConfigError(f"{cpu_repo} holds no task: build one first (cascade build --task NAME)")
    tasks = tasks or sorted(gates)
    unknown = sorted(set(tasks) - set(gates))
    if unknown:
        raise ConfigError(f"tasks {unknown} are not in {cpu_repo}; it holds {sorted(gates)}")
    names: list[str] = []
    llm_tiers = set()
    dim = (embedders.of_repository(cpu_repo) or embedders.get(embedders.DEFAULT_EMBEDDER)).dim
    with RepositoryWriter(gpu_repo, profile=PROFILE) as writer:
        names += _text_model(writer, contract.EMBEDDER_MODEL, cpu_repo / contract.EMBEDDER_MODEL)
        for task in tasks:
            gate = GateConfig.from_parameters({k: v.string_value for k, v in gates[task].parameters.items()})
            n_labels = len(gate.labels)
            for tier in gate.tiers:
                name = contract.tier_model_name(task, tier)
                source = cpu_repo / name
                if tier == contract.TIER_LOGREG:
                    config = onnx_gpu_config(name, source / contract.MODEL_VERSION / "model.onnx")
                    shutil.copy2(
                        source / contract.MODEL_VERSION / "model.onnx", writer.add(ProtoSpec.of(config)) / "model.onnx"
                    )
                    names.append(name)
                elif tier == contract.TIER_XGBOOST:
                    booster = source / contract.MODEL_VERSION / XGBOOST_JSON
                    if not booster.is_file():
                        raise ConfigError(
                            f"{booster} is missing: rebuild the task (the FIL backend reads the booster's JSON)"
                        )
                    fil = name + FIL_SUFFIX
                    shutil.copy2(
                        booster, writer.add(ProtoSpec.of(fil_config(fil, n_labels, embedding_dim=dim))) / XGBOOST_JSON
                    )
                    steps = [(fil, {FIL_INPUT: contract.EMBEDDING.name}, {FIL_OUTPUT: contract.PROBS.name})]
                    ensemble = ensemble_config(
                        name,
                        [(contract.EMBEDDING.name, mc.TYPE_FP32, [dim])],
                        [(contract.PROBS.name, mc.TYPE_FP32, [n_labels])],
                        steps,
                    )
                    writer.add(ProtoSpec.of(ensemble))
                    names += [fil, name]
                elif tier == contract.TIER_ENCODER:
                    names += _text_model(writer, name, source)
                else:
                    llm_tiers.add(tier)
            writer.add(ProtoSpec.of(gate_gpu_config(gates[task]), "gate"))
            names.append(task)
        for tier in sorted(llm_tiers):
            if tier == contract.TIER_LLM_LARGE and trtllm_engine_dir:
                continue  # written below, on TensorRT-LLM
            name = contract.tier_model_name("", tier)
            writer.add_dir(name, cpu_repo / name)  # llama.cpp on the CPU, as in the CPU profile
            names.append(name)
    if contract.TIER_LLM_LARGE in llm_tiers and trtllm_engine_dir:
        names += write_gpu_llm_models(gpu_repo, trtllm_engine_dir, trtllm_tokenizer_dir or trtllm_engine_dir)
    return names
