"""Request building for the client calls: the input and output tensors and the request parameters of a gate call
(``classify``) and of an LLM scorer call (``score``), for either Triton client module (``tritonclient.grpc`` or its
asyncio twin, passed in as ``module``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tritonclient.grpc as grpcclient

from cascade_client import contract
from cascade_client.errors import InvalidInput

#: What the array form asks for: LABEL and CONFIDENCE follow from PROBS, so the gate skips building them.
ARRAY_OUTPUTS = (contract.PROBS.name, contract.TIER.name, contract.DEGRADED.name)


def gate_inputs(module, texts: Sequence[str] | np.ndarray | None, embeddings: np.ndarray | None):
    """TEXT (and EMBEDDING when given); ``texts=None`` sends EMBEDDING alone (the gate then needs a
    ``max_tier`` that keeps the rows on the embedding tiers)."""
    inputs = []
    if texts is None:
        if embeddings is None or len(embeddings) == 0:
            raise InvalidInput("no texts or embeddings to classify")
    else:
        if len(texts) == 0:
            raise InvalidInput("no texts to classify")
        if isinstance(texts, np.ndarray) and texts.dtype == np.object_:
            raw = texts  # already bytes (the table job converts whole columns at once)
        else:
            raw = np.array([t.encode("utf-8") if isinstance(t, str) else t for t in texts], dtype=np.object_)
        raw = raw.reshape(-1, 1)  # TEXT is a per-row scalar: dims [1] after the batch dimension
        text = module.InferInput(contract.TEXT.name, list(raw.shape), contract.TEXT.datatype)
        text.set_data_from_numpy(raw)
        inputs.append(text)
    if embeddings is not None:
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        tensor = module.InferInput(contract.EMBEDDING.name, list(emb.shape), contract.EMBEDDING.datatype)
        tensor.set_data_from_numpy(emb)
        inputs.append(tensor)
    return inputs


def text_inputs(texts: Sequence[str]) -> list:
    """A TEXT input tensor of these texts, for a raw :meth:`CascadeClient.infer` call."""
    return gate_inputs(grpcclient, texts, None)


def gate_outputs(module, return_probs: bool):
    names = [contract.LABEL.name, contract.CONFIDENCE.name, contract.TIER.name, contract.DEGRADED.name]
    if return_probs:
        names.append(contract.PROBS.name)
    return [module.InferRequestedOutput(n) for n in names]


def array_outputs(module) -> list:
    return [module.InferRequestedOutput(n) for n in ARRAY_OUTPUTS]


def gate_parameters(max_tier, min_tier, return_probs: bool, on_tier_failure: str | None = None) -> dict | None:
    params = {}
    if max_tier is not None:
        params[contract.PARAM_MAX_TIER] = max_tier
    if min_tier is not None:
        params[contract.PARAM_MIN_TIER] = min_tier
    if return_probs:
        params[contract.PARAM_RETURN_PROBS] = True
    if on_tier_failure is not None:
        params[contract.PARAM_ON_TIER_FAILURE] = on_tier_failure
    return params or None


def score_inputs(module, prompts: Sequence, candidates: Sequence[str]) -> list:
    rows = [tuple(p) if not hasattr(p, "prefix") else (p.prefix, p.content, p.suffix) for p in prompts]
    if not rows:
        raise InvalidInput("no prompts to score")
    prompt = np.array([[part.encode("utf-8") for part in row] for row in rows], dtype=np.object_)
    cands = np.array([[c.encode("utf-8") for c in candidates]] * len(rows), dtype=np.object_)
    inputs = []
    for tensor, value in ((contract.PROMPT, prompt), (contract.CANDIDATES, cands)):
        item = module.InferInput(tensor.name, list(value.shape), tensor.datatype)
        item.set_data_from_numpy(value)
        inputs.append(item)
    return inputs


def score_parameters(calibrate: bool | None) -> dict | None:
    return {contract.PARAM_CALIBRATE: calibrate} if calibrate is not None else None
