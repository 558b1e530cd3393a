"""The one source of truth for model names, tensor names, dtypes, shapes and parameters.

The wire contract (model and tier names, tensors, request parameters, the admin header, ports) lives in the client
package, ``cascade_client.contract``, and is re-exported here; this module adds the server's own settings. Configs
(``cascade.repository.configgen``), Python backends, load tests and tests import these constants; nothing else spells
a tensor or model name.
"""

from __future__ import annotations

from dataclasses import replace

from cascade_client.contract import *  # noqa: F403 (the wire contract, re-exported)
from cascade_client.contract import (
    CANDIDATES,
    CONFIDENCE,
    DEGRADED,
    EMBEDDING,
    LABEL,
    MAX_TOKENS,
    OPTIONAL_EMBEDDING,
    OPTIONAL_TEXT,
    PARAM_ON_TIER_FAILURE,
    PROBS,
    PROMPT,
    PROMPT_TEXT,
    TEXT,
    TEXT_OUTPUT,
    TIER,
    TIER_ENCODER,
    TIER_LLM_LARGE,
    TIER_LLM_SMALL,
    TIER_LOGREG,
    TIER_XGBOOST,
    TRUNCATED,
    Tensor,
)

#: MiniLM-L6's window (sentence-transformers ``max_seq_length``): longer texts are truncated.
MAX_SEQ_TOKENS = 256
#: Texts are cut to this many characters before tokenization, so a 1 MB string costs no more than
#: a long paragraph (256 word pieces never need more characters than this).
MAX_TEXT_CHARS = 8192


def with_embedding_dim(tensors: tuple[Tensor, ...], dim: int) -> tuple[Tensor, ...]:
    """``tensors`` with EMBEDDING's width set to ``dim`` (the repository's embedder's)."""
    return tuple(replace(t, dims=(dim,)) if t.name == EMBEDDING.name else t for t in tensors)


# Model signatures: (inputs, outputs).
EMBEDDER_SIGNATURE = ((TEXT,), (EMBEDDING,))
EMBEDDING_TIER_SIGNATURE = ((EMBEDDING,), (PROBS,))
TEXT_TIER_SIGNATURE = ((TEXT,), (PROBS,))
GATE_SIGNATURE = ((OPTIONAL_TEXT, OPTIONAL_EMBEDDING), (LABEL, CONFIDENCE, TIER, PROBS, DEGRADED))
LLM_SCORER_SIGNATURE = ((PROMPT, CANDIDATES), (PROBS, TRUNCATED))

# --- model config parameters (config.pbtxt ``parameters``) ---------------------------------------
#: gate: the deadline of each call to a tier (ms), enforced by the gate; past it the rows go on to the next tier.
CFG_BLS_TIMEOUT_MS = "bls_timeout_ms"
#: gate, optional: where the gate's arrays live. "auto" (default): NumPy for a CPU instance, torch on the
#: instance's GPU for a GPU instance; "numpy", "torch:cpu" or "torch:cuda:N" choose one (tests run the torch
#: path on the CPU with "torch:cpu").
CFG_PLACEMENT = "placement"
PLACEMENT_AUTO = "auto"
#: gate, optional: where a GPU gate's tier calls (BLS) take their inputs and return their outputs. "device"
#: (default): the gate's GPU, by DLPack, no copies; "host": CPU memory, copied once each way, for a tier backend
#: that mishandles device tensors. Both served equal answers on an H200 (bench/results/gpu-20261129-215330.json).
CFG_TIER_MEMORY = "tier_memory"
TIER_MEMORY_DEVICE, TIER_MEMORY_HOST = "device", "host"
#: gate, optional: {tier name: ms} deadlines for some tiers (e.g. a tight one on llm_small); others use the above.
CFG_TIER_TIMEOUTS_MS = "tier_timeouts_ms"
#: gate, optional: {tier name: ms} more deadline per row of a call (defaults: DEFAULT_ROW_TIMEOUT_MS), so a call's
#: deadline grows with its rows: ``base + rows * per_row``, where the base is tier_timeouts_ms or bls_timeout_ms.
CFG_ROW_TIMEOUTS_MS = "row_timeouts_ms"
#: gate, optional: how long a call may wait for a tier (the gate's own lane, then Triton's queue) before its rows
#: get a best-effort answer. Waiting is not failing: it never opens the breaker, and it is not charged to the
#: call's deadline.
CFG_QUEUE_TIMEOUT_MS = "queue_timeout_ms"
#: gate, optional: the default of the ``on_tier_failure`` request parameter.
CFG_ON_TIER_FAILURE = PARAM_ON_TIER_FAILURE
CFG_ONNX_FILE = "onnx_file"
CFG_TOKENIZER_DIR = "tokenizer_dir"
CFG_NUM_THREADS = "num_threads"
CFG_PROMPTS = "prompts"  # gate: {LLM tier name: prompt}
#: gate: embedding tiers the gate runs in-process from the tier model's own ONNX file (no BLS hop; the
#: tier model stays served for direct calls). Tier 0 over precomputed embeddings is the table job's hot path.
CFG_INLINE_TIERS = "inline_tiers"
#: Keys of a Python-backend model's parameters that Triton itself reads; the gate ignores them. With "no", a
#: GPU instance receives its input tensors where they are (GPU memory too) instead of copied to the host.
FORCE_CPU_ONLY_INPUT_TENSORS = "FORCE_CPU_ONLY_INPUT_TENSORS"
PYTHON_BACKEND_PARAMETERS = (FORCE_CPU_ONLY_INPUT_TENSORS, "EXECUTION_ENV_PATH")
#: The version folder the repository writer uses for every model (an inline tier's file is read from it).
MODEL_VERSION = "1"
CFG_LLM_MODEL = "llm_model"
CFG_N_CTX = "n_ctx"
CFG_CALIBRATE = "calibrate"
# An LLM tier on an OpenAI-compatible endpoint (``cascade.llm.remote``): ``openai:MODEL@URL`` and how to call it.
CFG_LLM_ENDPOINT = "llm_endpoint"
CFG_KEY_ENV = "api_key_env"  # the name of the environment variable holding the key, never the key
CFG_CONCURRENCY = "max_concurrency"
CFG_TIMEOUT_S = "timeout_s"
CFG_RETRIES = "retries"
CFG_SCORING_MODE = "scoring_mode"
CFG_VERIFY_TLS = "verify_tls"
#: Overrides a remote LLM tier's URL at load time (a Helm value sets it): ``CASCADE_LLM_LARGE_URL``.
LLM_URL_ENV = "CASCADE_{tier}_URL"
# What an LLM tier costs (``cascade.llm.meter.Price``): per million tokens in and out, and per CPU-hour.
CFG_PRICE_IN = "price_in_per_mtok"
CFG_PRICE_OUT = "price_out_per_mtok"
CFG_PRICE_CPU_HOUR = "price_per_cpu_hour"

# --- sizing to the machine ----------------------------------------------------------------------
#: Threads of each llama.cpp model (llm_small, llm_large, llm_generate), overriding the sizing from the cores the
#: server may use (``cascade.runtime.sizing``). ``cascade serve --llm-threads`` and the Helm value ``llm.threads`` set
#: it.
LLM_THREADS_ENV = "CASCADE_LLM_THREADS"
#: A model's ``num_threads`` parameter may be this: sized at load time from the server's cores.
THREADS_AUTO = "auto"

# --- admin APIs ----------------------------------------------------------------------------------
RESTRICTED_PROTOCOLS = ("model-repository", "trace", "logging")

# --- defaults ------------------------------------------------------------------------------------
DEFAULT_MAX_BATCH_SIZE = 1024
#: The gate takes bigger requests than its tiers (it calls them in chunks of their own limit): the table job
#: sends 4,096 rows per request, which halves the per-request cost on both sides of the wire.
GATE_MAX_BATCH_SIZE = 4096
LLM_MAX_BATCH_SIZE = 64
#: Instances of each CPU LLM scorer, each with half the cores' threads (``cascade.runtime.sizing``): one request leaves
#: half the machine to the other tiers; a bulk labelling job keeps two requests in flight and uses every core
#: (independent single-thread instances do not stall each other as the threads of one instance do).
LLM_INSTANCES = 2
DEFAULT_BLS_TIMEOUT_MS = 30_000
#: Deadline per row of a call, on top of the base: generous against a slow or busy machine (the LLM tiers take
#: 0.05-0.3 s per row on 2 cores), so that only a hung or dead tier misses it.
DEFAULT_ROW_TIMEOUT_MS = {
    TIER_LOGREG: 10,
    TIER_XGBOOST: 10,
    TIER_ENCODER: 100,
    TIER_LLM_SMALL: 2_000,
    TIER_LLM_LARGE: 4_000,
}
#: The embedder's deadline per row (the base is bls_timeout_ms).
EMBEDDER_ROW_TIMEOUT_MS = 50
DEFAULT_QUEUE_TIMEOUT_MS = 120_000
#: After a tier call fails or misses its deadline, the gate skips that tier for this long, then tries it again
#: (a circuit breaker: a dead tier costs one failure per interval, not one per request).
TIER_RETRY_AFTER_S = 5.0

# --- GPU profile of the LLM tiers (TensorRT-LLM) and the streaming text endpoint -----------------
# The ``tensorrt_llm`` names follow NVIDIA's Triton TensorRT-LLM backend
# (tensorrtllm_backend, all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt); only the ones this
# project sends or reads are here, the rest of that model's standard tensors live in
# ``cascade.repository.trtllm_config``. A per-row scalar (dims ``()``) is ``dims: [1]`` + ``reshape: []``, as there.
#: The TensorRT-LLM engine model (backend "tensorrtllm"); ``llm_large`` and ``llm_generate`` call it with BLS.
TRTLLM_MODEL = "tensorrt_llm"
TRTLLM_INPUT_IDS = Tensor("input_ids", "INT32", (-1,))
TRTLLM_INPUT_LENGTHS = Tensor("input_lengths", "INT32", ())
TRTLLM_REQUEST_OUTPUT_LEN = Tensor("request_output_len", "INT32", ())
TRTLLM_END_ID = Tensor("end_id", "INT32", (), optional=True)
TRTLLM_PAD_ID = Tensor("pad_id", "INT32", (), optional=True)
TRTLLM_STREAMING = Tensor("streaming", "BOOL", (), optional=True)
TRTLLM_RETURN_GENERATION_LOGITS = Tensor("return_generation_logits", "BOOL", (), optional=True)
#: [batch, beams, tokens]; the backend refuses a request that does not ask for it and ``sequence_length``.
TRTLLM_OUTPUT_IDS = Tensor("output_ids", "INT32", (-1, -1))
TRTLLM_SEQUENCE_LENGTH = Tensor("sequence_length", "INT32", (-1,))
#: [batch, beams, steps, vocab] FP32 (engine built with --gather_generation_logits --logits_dtype float32).
TRTLLM_GENERATION_LOGITS = Tensor("generation_logits", "FP32", (-1, -1, -1))
# ``tensorrt_llm`` config.pbtxt parameters (the backend's keys).
TRTLLM_CFG_ENGINE_DIR = "gpt_model_path"
TRTLLM_CFG_BATCHING_STRATEGY = "gpt_model_type"
TRTLLM_CFG_MAX_BEAM_WIDTH = "max_beam_width"
TRTLLM_CFG_KV_CACHE_FRACTION = "kv_cache_free_gpu_mem_fraction"
TRTLLM_CFG_SCHEDULER_POLICY = "batch_scheduler_policy"
TRTLLM_CFG_EXCLUDE_INPUT = "exclude_input_in_output"
TRTLLM_CFG_KV_CACHE_REUSE = "enable_kv_cache_reuse"

LLM_GENERATE_SIGNATURE = ((PROMPT_TEXT, MAX_TOKENS), (TEXT_OUTPUT,))
#: Which runtime serves ``llm_generate`` / ``llm_large``: llama.cpp on CPU, BLS over ``tensorrt_llm`` on GPU.
CFG_RUNTIME = "runtime"
RUNTIME_LLAMA_CPP = "llama_cpp"
RUNTIME_TRTLLM = "tensorrt_llm"
CFG_MAX_INPUT_LEN = "max_input_len"  # the engine's --max_input_len (tokens)
CFG_TRTLLM_MODEL = "trtllm_model"  # the BLS target (default TRTLLM_MODEL)
CFG_DEFAULT_MAX_TOKENS = "default_max_tokens"
CFG_MAX_TOKENS_LIMIT = "max_tokens_limit"
DEFAULT_GENERATE_MAX_TOKENS = 64
GENERATE_MAX_TOKENS_LIMIT = 1024
