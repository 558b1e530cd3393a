"""Triton glue for ``llm_large`` on GPU: PROMPT + CANDIDATES -> PROBS + TRUNCATED, BLS over ``tensorrt_llm``.

Same contract as the CPU scorer (``python_backends/llm_scorer``). Each row is tokenized with the engine's
Hugging Face tokenizer and sent to ``tensorrt_llm`` as its own request (``request_output_len=1``,
``return_generation_logits=true``), all rows at once (the engine batches them in flight); the first step's
logits become PROBS over the candidates' first tokens. The logic lives in ``cascade.trtllm``.

**Unverified**: written to tensorrtllm_backend's conventions, not yet run on a GPU (docs/gpu-llm.md).
"""

import asyncio
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from cascade import contract
from cascade.errors import CascadeError, TierFailure, triton_error
from cascade.llm import CONTENT_FREE, Prompt, parse_scorer_inputs, parse_scorer_parameters
from cascade.trtllm import (
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


def _cpu_memory():
    """Ask for BLS outputs in host memory (the logits are read with numpy); {} where unsupported."""
    preferred = getattr(pb_utils, "PreferredMemory", None)
    kind = getattr(pb_utils, "TRITONSERVER_MEMORY_CPU", None)
    return {"preferred_memory": preferred(kind, 0)} if preferred is not None and kind is not None else {}


def _host(tensor) -> np.ndarray:
    if tensor.is_cpu():
        return tensor.as_numpy()
    from torch.utils.dlpack import from_dlpack

    return from_dlpack(tensor.to_dlpack()).float().cpu().numpy()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.tokenizer = load_tokenizer(params[contract.CFG_TOKENIZER_DIR])
        self.max_input_len = int(params[contract.CFG_MAX_INPUT_LEN])
        self.trtllm_model = params.get(contract.CFG_TRTLLM_MODEL, contract.TRTLLM_MODEL)
        self.calibrate = params.get(contract.CFG_CALIBRATE, "true").lower() == "true"
        self.memory = _cpu_memory()
        self.first_tokens = {}  # (suffix, candidates) -> first token ids
        self.priors = {}  # (prefix, suffix, candidates) -> content-free label prior
        self.warned = False

    async def _first_step_logits(self, input_ids):
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
                logits = _host(tensor)
                ids = pb_utils.get_output_tensor_by_name(response, OUTPUT_IDS)
                if ids is not None and not self.warned and greedy_mismatch(logits, _host(ids)).any():
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

    async def _probs(self, prompts, candidates, calibrate_override=None):
        rows = [encode_prompt(self.tokenizer, p, self.max_input_len) for p in prompts]
        firsts = [self._first_tokens(p.suffix, candidates) for p in prompts]
        logits = await asyncio.gather(*(self._first_step_logits(r.input_ids) for r in rows))
        probs = np.concatenate([probs_from_generation_logits(lg, ids) for lg, ids in zip(logits, firsts, strict=True)])
        use_prior = self.calibrate if calibrate_override is None else calibrate_override
        if use_prior and len(prompts):
            priors = [await self._prior(p.prefix, p.suffix, candidates) for p in prompts]
            probs = calibrate(probs, np.stack(priors))
        truncated = np.array([r.truncated for r in rows], dtype=np.bool_)
        return probs.astype(np.float32), truncated

    def _first_tokens(self, suffix, candidates):
        key = (suffix, candidates)
        if key not in self.first_tokens:
            self.first_tokens[key] = candidate_first_tokens(self.tokenizer, suffix, candidates)
        return self.first_tokens[key]

    async def _prior(self, prefix, suffix, candidates):
        key = (prefix, suffix, candidates)
        if key not in self.priors:
            ids = self._first_tokens(suffix, candidates)
            prompts = [Prompt(prefix, cf, suffix) for cf in CONTENT_FREE]
            rows = [encode_prompt(self.tokenizer, p, self.max_input_len) for p in prompts]
            logits = await asyncio.gather(*(self._first_step_logits(r.input_ids) for r in rows))
            self.priors[key] = np.mean([probs_from_generation_logits(lg, ids)[0] for lg in logits], axis=0)
        return self.priors[key]

    async def _respond(self, request):
        try:
            prompt = pb_utils.get_input_tensor_by_name(request, contract.PROMPT.name).as_numpy()
            cands = pb_utils.get_input_tensor_by_name(request, contract.CANDIDATES.name).as_numpy()
            prompts, candidates = parse_scorer_inputs(prompt, cands)
            calibrate_override = parse_scorer_parameters(request.parameters())
            probs, truncated = await self._probs(prompts, candidates, calibrate_override)
            return pb_utils.InferenceResponse(
                [pb_utils.Tensor(contract.PROBS.name, probs), pb_utils.Tensor(contract.TRUNCATED.name, truncated)]
            )
        except Exception as exc:  # noqa: BLE001 - a message to the client, the details to the log
            if not isinstance(exc, CascadeError):
                pb_utils.Logger.log_error(f"llm_large (TensorRT-LLM) failed: {exc!r}")
            return pb_utils.InferenceResponse(error=triton_error(pb_utils, exc, "LLM scoring failed"))

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._respond(r) for r in requests)))
