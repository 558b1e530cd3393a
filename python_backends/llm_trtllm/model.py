"""Triton glue for ``llm_large`` on GPU: PROMPT + CANDIDATES -> PROBS + TRUNCATED, BLS over ``tensorrt_llm``.

Same contract as the CPU scorer (``python_backends/llm_scorer``). Each row is tokenized with the engine's
Hugging Face tokenizer and sent to ``tensorrt_llm`` as its own request (``request_output_len=1``,
``return_generation_logits=true``), all rows at once (the engine batches them in flight); the first step's
logits become PROBS over the candidates' first tokens. The logic lives in ``cascade.llm.trtllm_bls`` (the BLS calls,
``pb_utils`` passed in) and ``cascade.llm.trtllm``.

**Unverified**: written to tensorrtllm_backend's conventions, not yet run on a GPU (docs/gpu-llm.md).
"""

import asyncio
import json

import triton_python_backend_utils as pb_utils

from cascade import contract, crash
from cascade.errors import CascadeError, triton_error
from cascade.llm.prompts import parse_scorer_inputs, parse_scorer_parameters
from cascade.llm.trtllm_bls import TrtllmScorer


class TritonPythonModel:
    def initialize(self, args):
        crash.arm(args["model_name"], args["model_instance_name"])  # a record of a fatal signal
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.scorer = TrtllmScorer(pb_utils, params)

    async def _respond(self, request):
        try:
            prompt = pb_utils.get_input_tensor_by_name(request, contract.PROMPT.name).as_numpy()
            cands = pb_utils.get_input_tensor_by_name(request, contract.CANDIDATES.name).as_numpy()
            prompts, candidates = parse_scorer_inputs(prompt, cands)
            calibrate_override = parse_scorer_parameters(request.parameters())
            probs, truncated = await self.scorer.probs(prompts, candidates, calibrate_override)
            return pb_utils.InferenceResponse(
                [pb_utils.Tensor(contract.PROBS.name, probs), pb_utils.Tensor(contract.TRUNCATED.name, truncated)]
            )
        except Exception as exc:  # noqa: BLE001 - a message to the client, the details to the log
            if not isinstance(exc, CascadeError):
                pb_utils.Logger.log_error(f"llm_large (TensorRT-LLM) failed: {exc!r}")
            return pb_utils.InferenceResponse(error=triton_error(pb_utils, exc, "LLM scoring failed"))

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._respond(r) for r in requests)))

    def finalize(self):
        crash.disarm()  # unloaded: a fault while the process exits is no crash of serving
