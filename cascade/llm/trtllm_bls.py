"""The GPU ``llm_large`` scorer's calls of ``tensorrt_llm`` (BLS): each row's first-step logits, turned into PROBS
over the candidates' first tokens, calibrated by the content-free prior (:class:`TrtllmScorer`); and the host-memory
request option that ``llm_generate`` shares (:func:`cpu_memory`).

No Triton import: ``python_backends/llm_trtllm/model.py`` passes its ``triton_python_backend_utils`` module in, as
the gate does (cascade.gate.request_io). The pure logic (tokens, logits -> PROBS) is :mod:`cascade.llm.trtllm`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from cascade import contract
from cascade.errors import TierFailure
from cascade.llm.prompts import CONTENT_FREE, Prompt
from cascade.llm.trtllm import (
    calibrate,
    candidate_first_tokens,
    encode_prompt,
    greedy_mismatch,
    load_tokenizer,
    probs_from_generation_logits,
    scoring_inputs,
)

LOGITS = contract.TRTLLM_GENERATION_LOGITS.name
OUTPUT_IDS = contract.TRTLLM_OUTPUT_IDS.name
# The backend refuses a request whose requested outputs lack output_ids and sequence_length.
REQUESTED = [OUTPUT_IDS, contract.TRTLLM_SEQUENCE_LENGTH.name, LOGITS]


def cpu_memory(pb_utils: Any) -> dict:
    """Ask for BLS outputs in host memory (the logits are read with numpy); {} where unsupported."""
    preferred = getattr(pb_utils, "PreferredMemory", None)
    kind = getattr(pb_utils, "TRITONSERVER_MEMORY_CPU", None)
    return {"preferred_memory": preferred(kind, 0)} if preferred is not None and kind is not None else {}


def host(tensor) -> np.ndarray:
    if tensor.is_cpu():
        return tensor.as_numpy()
    from torch.utils.dlpack import from_dlpack

    return from_dlpack(tensor.to_dlpack()).float().cpu().numpy()


class TrtllmScorer:
    """PROBS and TRUNCATED of scorer rows, each row its own ``tensorrt_llm`` request (the engine batches them in
    flight); ``params`` are the model config's parameters."""

    def __init__(self, pb_utils: Any, params: dict[str, str]) -> None:
        self.pb = pb_utils
        self.tokenizer = load_tokenizer(params[contract.CFG_TOKENIZER_DIR])
        self.max_input_len = int(params[contract.CFG_MAX_INPUT_LEN])
        self.trtllm_model = params.get(contract.CFG_TRTLLM_MODEL, contract.TRTLLM_MODEL)
        self.calibrate = params.get(contract.CFG_CALIBRATE, "true").lower() == "true"
        self.memory = cpu_memory(pb_utils)
        self.first_tokens = {}  # (suffix, candidates) -> first token ids
        self.priors = {}  # (prefix, suffix, candidates) -> content-free label prior
        self.warned = False

    async def first_step_logits(self, input_ids):
        pb_utils = self.pb
        inputs = scoring_inputs(input_ids, self.tokenizer.eos_id, self.tokenizer.pad_id)
        request = pb_utils.InferenceRequest(
            model_name=self.trtllm_model,
            inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
            requested_output_names=REQUESTED,
            **self.memory,
        )
        # tensorrt_llm is decoupled (it also streams for llm_generate): one response, then the final flag.
        responses = await request.async_exec(decoupled=True)
        logits = None
        for response in responses:
            if response.has_error():
                raise TierFailure(f"{self.trtllm_model}: {response.error().message()}")
            tensor = pb_utils.get_output_tensor_by_name(response, LOGITS)
            if tensor is not None and logits is None:
                logits = host(tensor)
                ids = pb_utils.get_output_tensor_by_name(response, OUTPUT_IDS)
                if ids is not None and not self.warned and greedy_mismatch(logits, host(ids)).any():
                    self.warned = True
                    pb_utils.Logger.log_warn(
                        "llm_large: the generated token is not the argmax of generation_logits step 0; this "
                        "TensorRT-LLM version may not return the first token's logits there (docs/gpu-llm.md)"
                    )
        if logits is None:
            raise TierFailure(
                f"{self.trtllm_model} returned no {LOGITS}: was the engine built with --gather_generation_logits?"
            )
        return logits

    async def probs(self, prompts, candidates, calibrate_override=None):
        rows = [encode_prompt(self.tokenizer, p, self.max_input_len) for p in prompts]
        firsts = [self.first_token_ids(p.suffix, candidates) for p in prompts]
        logits = await asyncio.gather(*(self.first_step_logits(r.input_ids) for r in rows))
        probs = np.concatenate([probs_from_generation_logits(lg, ids) for lg, ids in zip(logits, firsts, strict=True)])
        use_prior = self.calibrate if calibrate_override is None else calibrate_override
        if use_prior and len(prompts):
            priors = [await self.prior(p.prefix, p.suffix, candidates) for p in prompts]
            probs = calibrate(probs, np.stack(priors))
        truncated = np.array([r.truncated for r in rows], dtype=np.bool_)
        return probs.astype(np.float32), truncated

    def first_token_ids(self, suffix, candidates):
        key = (suffix, candidates)
        if key not in self.first_tokens:
            self.first_tokens[key] = candidate_first_tokens(self.tokenizer, suffix, candidates)
        return self.first_tokens[key]

    async def prior(self, prefix, suffix, candidates):
        key = (prefix, suffix, candidates)
        if key not in self.priors:
            ids = self.first_token_ids(suffix, candidates)
            prompts = [Prompt(prefix, cf, suffix) for cf in CONTENT_FREE]
            rows = [encode_prompt(self.tokenizer, p, self.max_input_len) for p in prompts]
            logits = await asyncio.gather(*(self.first_step_logits(r.input_ids) for r in rows))
            self.priors[key] = np.mean([probs_from_generation_logits(lg, ids)[0] for lg in logits], axis=0)
        return self.priors[key]
