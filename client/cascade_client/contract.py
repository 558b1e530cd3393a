"""The wire contract: what a client and the server agree on. Model names, tier names and numbers, tensor names,
dtypes and per-row shapes, the gate's request parameters, the config parameters a client reads, the admin header and
the default ports.

The server's own settings (deadlines, sizing, config keys only models read, the GPU profile's tensors) are in
``cascade.contract``, which re-exports every name here: server code spells ``contract.TEXT`` either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cascade_client.errors import InvalidInput

# --- shared models -----------------------------------------------------------------------------
EMBEDDER_MODEL = "embedder"
#: Width of the default embedder's vectors (MiniLM-L6). A repository's own width is its embedder's
#: (``cascade.embedders``): configs are generated with it (:func:`with_embedding_dim`), and the gate and the
#: client read it from the served configs.
EMBEDDING_DIM = 384

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


def tier_from_name(value, error: type[Exception] = InvalidInput) -> int:
    """The tier number of ``value``: 0-4, its digits, or its name; else ``error``."""
    if isinstance(value, int) and not isinstance(value, bool) and value in TIER_NAMES:
        return value
    if isinstance(value, str):
        if value in TIER_BY_NAME:
            return TIER_BY_NAME[value]
        if value.isdigit() and int(value) in TIER_NAMES:
            return int(value)
    raise error(f"unknown tier {value!r}; tiers are 0-4 or {', '.join(TIER_BY_NAME)}")


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
#: The gate's TEXT may be left out when EMBEDDING is sent and ``max_tier`` keeps the rows on the embedding
#: tiers (the paper's precomputed-embedding case: no text on the wire, tiers 0-1 never see it).
OPTIONAL_TEXT = Tensor("TEXT", "BYTES", (), optional=True)
PROBS = Tensor("PROBS", "FP32", (-1,))
LABEL = Tensor("LABEL", "BYTES", ())
CONFIDENCE = Tensor("CONFIDENCE", "FP32", ())
TIER = Tensor("TIER", "INT32", ())
#: Gate output: the row's answer is a best-effort one. The tier that should have answered it failed (error,
#: deadline, breaker open, unloaded), so it carries the answer of the most confident tier that did score it
#: (``TIER`` names that tier). Only with ``on_tier_failure = best_effort``.
DEGRADED = Tensor("DEGRADED", "BOOL", ())
#: LLM scorer input: per row (prefix, content, suffix); only the content is cut to fit the context.
PROMPT = Tensor("PROMPT", "BYTES", (3,))
#: LLM scorer input: per row, the label verbalizations to score (same count in one request).
CANDIDATES = Tensor("CANDIDATES", "BYTES", (-1,))
#: LLM scorer output: whether the row's content was cut to fit the model's context.
TRUNCATED = Tensor("TRUNCATED", "BOOL", ())

# --- request parameters of the gate --------------------------------------------------------------
PARAM_MAX_TIER = "max_tier"
PARAM_MIN_TIER = "min_tier"
PARAM_RETURN_PROBS = "return_probs"
#: What a row gets when the tier that should answer it fails: ``best_effort`` (the answer of the most confident
#: tier that scored it, flagged DEGRADED; an error only for rows no tier scored) or ``error`` (the request fails
#: with UNAVAILABLE). A request parameter, and a gate config parameter of the same name for the default.
PARAM_ON_TIER_FAILURE = "on_tier_failure"
ON_FAILURE_BEST_EFFORT = "best_effort"
ON_FAILURE_ERROR = "error"
ON_TIER_FAILURE_CHOICES = (ON_FAILURE_BEST_EFFORT, ON_FAILURE_ERROR)
GATE_REQUEST_PARAMETERS = (PARAM_MAX_TIER, PARAM_MIN_TIER, PARAM_RETURN_PROBS, PARAM_ON_TIER_FAILURE)
# Request parameter of the LLM scorers (llm_small, llm_large): contextual calibration on/off for this request,
# overriding the model's CFG_CALIBRATE default (the gate sends each task prompt's choice).
PARAM_CALIBRATE = "calibrate"
# --- model config parameters a client reads --------------------------------------------------------
CFG_TASK = "task"
CFG_LABELS = "labels"
CFG_TIERS = "tiers"
CFG_THRESHOLDS = "thresholds"
#: embedder: which embedder it is (``cascade.embedders``), so that a client can refuse vectors made by another.
CFG_EMBEDDER = "embedder"

# --- admin APIs and TLS ------------------------------------------------------------------------
#: With a key in this variable, ``cascade serve`` restricts the admin protocols (model load/unload and the
#: repository index, trace, logging) to requests that carry it in ADMIN_HEADER; inference stays open.
ADMIN_KEY_ENV = "CASCADE_ADMIN_KEY"
#: The header (gRPC metadata) that carries the key; the Helm chart's ``restrictedProtocols.headerKey``.
ADMIN_HEADER = "triton-admin-key"
#: Over gRPC, Triton expects the restricted header with this prefix (HTTP takes ADMIN_HEADER as it is).
GRPC_ADMIN_HEADER = "triton-grpc-protocol-" + ADMIN_HEADER
#: A CA certificate (PEM) in this variable makes every client of the project (the CLI, the table jobs,
#: the Locust users) speak gRPC over TLS and trust that CA.
GRPC_CA_ENV = "CASCADE_GRPC_CA"

# --- ports --------------------------------------------------------------------------------------
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002

# --- streaming text ------------------------------------------------------------------------------
#: Streaming free-form text (a decoupled model, both profiles): one ``TEXT_OUTPUT`` piece per response,
#: the last one flagged COMPLETE_FINAL. One prompt per request (``[1, 1]`` on the wire).
LLM_GENERATE_MODEL = "llm_generate"
PROMPT_TEXT = Tensor("PROMPT_TEXT", "BYTES", ())
MAX_TOKENS = Tensor("MAX_TOKENS", "INT32", (), optional=True)
TEXT_OUTPUT = Tensor("TEXT_OUTPUT", "BYTES", ())

#: What ``from cascade_client.contract import *`` gives (``cascade.contract`` re-exports it).
__all__ = [name for name in list(globals()) if name.isupper()] + [
    "Tensor",
    "gate_model_name",
    "tier_from_name",
    "tier_model_name",
]
