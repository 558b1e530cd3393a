"""Triton glue for an LLM label scorer on CPU (llama.cpp): PROMPT + CANDIDATES -> PROBS.

The logic (prompt tokenization, prefix KV reuse, contextual calibration, truncation) lives in
``cascade.llm.scorer``. One copy of each LLM serves every task.
"""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from cascade import contract, crash
from cascade.errors import CascadeError, check_numpy, triton_error
from cascade.llm.gguf import gguf_path
from cascade.llm.meter import Meter, Price
from cascade.llm.prompts import parse_scorer_inputs, parse_scorer_parameters
from cascade.llm.scorer import LlamaScorer
from cascade.runtime.sizing import llm_model_threads


class TritonPythonModel:
    def initialize(self, args):
        crash.arm(args["model_name"], args["model_instance_name"])  # a record of a fatal signal
        check_numpy()
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threads = llm_model_threads(params.get(contract.CFG_NUM_THREADS))
        pb_utils.Logger.log_info(f"{config['name']}: llama.cpp n_threads={threads}")
        self.scorer = LlamaScorer(
            gguf_path(params[contract.CFG_LLM_MODEL]),
            n_ctx=int(params.get(contract.CFG_N_CTX, "1024")),
            n_threads=threads,
            calibrate=params.get(contract.CFG_CALIBRATE, "true").lower() == "true",
        )
        self.meter = Meter(pb_utils, config["name"], Price.from_parameters(params))

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens, cpu = self.scorer.evaluated_tokens, time.process_time()
            try:
                prompts, candidates = parse_scorer_inputs(
                    pb_utils.get_input_tensor_by_name(request, contract.PROMPT.name).as_numpy(),
                    pb_utils.get_input_tensor_by_name(request, contract.CANDIDATES.name).as_numpy(),
                )
                calibrate = parse_scorer_parameters(request.parameters())
                result = self.scorer.score(prompts, candidates, calibrate=calibrate)
                responses.append(
                    pb_utils.InferenceResponse(
                        [
                            pb_utils.Tensor(contract.PROBS.name, result.probs.astype(np.float32)),
                            pb_utils.Tensor(contract.TRUNCATED.name, result.truncated.astype(np.bool_)),
                        ]
                    )
                )
            except Exception as exc:  # noqa: BLE001 - a message to the client, the details to the log
                if not isinstance(exc, CascadeError):
                    pb_utils.Logger.log_error(f"llm scorer failed: {exc!r}")
                responses.append(pb_utils.InferenceResponse(error=triton_error(pb_utils, exc, "LLM scoring failed")))
            self.meter.record(tokens_in=self.scorer.evaluated_tokens - tokens, cpu_s=time.process_time() - cpu)
        return responses

    def finalize(self):
        crash.disarm()  # unloaded: a fault while the process exits is no crash of serving
