"""The one source of truth for model names, tensor names, dtypes, shapes and parameters.

Configs (``cascade.configgen``), Python backends, the client, load tests and tests import these
constants; nothing else spells a tensor or model name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# --- shared models -----------------------------------------------------------------------------
EMBEDDER_MODEL = "embedder"
EMBEDDING_DIM = 384
#: MiniLM-L6's window (sentence-transformers ``max_seq_length``): longer texts are truncated.
MAX_SEQ_TOKENS = 256
#: Texts are cut to this many characters before tokenization, so a 1 MB string costs no more than
#: a long paragraph (256 word pieces never need more characters than this).
MAX_TEXT_CHARS = 8192

# --- tiers ---------------------------------------------------------------------------------------
TIER_LOGREG = 0
TIER_XGBOOST = 1
TIER_ENCODER = 2
TIER_LLM_SMALL = 3
TIER_LLM_LARGE = 4
TIER_NAMES = {
    TIER_LOGREG: "logreg",
    TIER_XGBOOST: "xgboost",
    TIER_ENCODER: "encoder",
    TIER_LLM_SMALL: "llm_small",
    TIER_LLM_LARGE: "llm_large",
}
TIER_BY_NAME = {name: tier for tier, name in TIER_NAMES.items()}
#: Tiers whose input is the sentence embedding (the others read text).
EMBEDDING_TIERS = frozenset({TIER_LOGREG, TIER_XGBOOST})
#: Tiers served by the shared LLM scorers (prompt + candidates -> probabilities).
LLM_TIERS = frozenset({TIER_LLM_SMALL, TIER_LLM_LARGE})
#: Tiers served by one model per task (``<task>_<tier name>``); the others are shared models.
PER_TASK_TIERS = (TIER_LOGREG, TIER_XGBOOST, TIER_ENCODER)


def tier_model_name(task: str, tier: int) -> str:
    """Name of the Triton model that serves ``tier`` for ``task``."""
    if tier in PER_TASK_TIERS:
        return f"{task}_{TIER_NAMES[tier]}"
    return TIER_NAMES[tier]


def gate_model_name(task: str) -> str:
    """The public entry point of a task is the gate, named after the task."""
    return task


# --- tensors -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tensor:
    name: str
    #: Triton datatype as used by the inference protocol ("FP32", "BYTES", ...).
    datatype: str
    #: Per-row shape (without the batch dimension).
    dims: tuple[int, ...]
    optional: bool = False

    @property
    def numpy_dtype(self) -> type:
        return NUMPY_DTYPES[self.datatype]


NUMPY_DTYPES = {"FP32": np.float32, "INT32": np.int32, "BYTES": np.object_, "BOOL": np.bool_}

TEXT = Tensor("TEXT", "BYTES", ())
EMBEDDING = Tensor("EMBEDDING", "FP32", (EMBEDDING_DIM,))
OPTIONAL_EMBEDDING = Tensor("EMBEDDING", "FP32", (EMBEDDING_DIM,), optional=True)
PROBS = Tensor("PROBS", "FP32", (-1,))
LABEL = Tensor("LABEL", "BYTES", ())
CONFIDENCE = Tensor("CONFIDENCE", "FP32", ())
TIER = Tensor("TIER", "INT32", ())
#: LLM scorer input: per row (prefix, content, suffix); only the content is cut to fit the context.
PROMPT = Tensor("PROMPT", "BYTES", (3,))
#: LLM scorer input: per row, the label verbalizations to score (same count in one request).
CANDIDATES = Tensor("CANDIDATES", "BYTES", (-1,))
#: LLM scorer output: whether the row's content was cut to fit the model's context.
TRUNCATED = Tensor("TRUNCATED", "BOOL", ())

# Model signatures: (inputs, outputs).
EMBEDDER_SIGNATURE = ((TEXT,), (EMBEDDING,))
EMBEDDING_TIER_SIGNATURE = ((EMBEDDING,), (PROBS,))
TEXT_TIER_SIGNATURE = ((TEXT,), (PROBS,))
GATE_SIGNATURE = ((TEXT, OPTIONAL_EMBEDDING), (LABEL, CONFIDENCE, TIER, PROBS))
LLM_SCORER_SIGNATURE = ((PROMPT, CANDIDATES), (PROBS, TRUNCATED))

# --- request parameters of the gate --------------------------------------------------------------
PARAM_MAX_TIER = "max_tier"
PARAM_MIN_TIER = "min_tier"
PARAM_RETURN_PROBS = "return_probs"
GATE_REQUEST_PARAMETERS = (PARAM_MAX_TIER, PARAM_MIN_TIER, PARAM_RETURN_PROBS)

# --- model config parameters (config.pbtxt ``parameters``) ---------------------------------------
CFG_TASK = "task"
CFG_LABELS = "labels"
CFG_TIERS = "tiers"
CFG_THRESHOLDS = "thresholds"
CFG_BLS_TIMEOUT_MS = "bls_timeout_ms"
CFG_ONNX_FILE = "onnx_file"
CFG_TOKENIZER_DIR = "tokenizer_dir"
CFG_NUM_THREADS = "num_threads"
CFG_PROMPT = "prompt"
CFG_LLM_MODEL = "llm_model"
CFG_N_CTX = "n_ctx"
CFG_CALIBRATE = "calibrate"

# --- defaults ------------------------------------------------------------------------------------
DEFAULT_MAX_BATCH_SIZE = 1024
LLM_MAX_BATCH_SIZE = 64
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_BLS_TIMEOUT_MS = 30_000
