"""Triton glue for an LLM label scorer on an OpenAI-compatible endpoint: PROMPT + CANDIDATES -> PROBS.

The logic (the probe, the scoring modes, calibration, retries, the key from the environment) lives in
``cascade.llm.remote`` and ``cascade.llm.openai_http``; the counters in ``cascade.llm.meter``. A failed call is a
failed tier to the gate (UNAVAILABLE), never a traceback.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from cascade import contract
from cascade.errors import check_numpy, triton_error
from cascade.llm.meter import Meter, Price
from cascade.llm.prompts import parse_scorer_inputs, parse_scorer_parameters
from cascade.llm.remote import RemoteScorer, endpoint_from_parameters


class TritonPythonModel:
    def initialize(self, args):
        check_numpy()
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        endpoint = endpoint_from_parameters(params, config["name"])
        key = "set" if endpoint.api_key() else "not set"
        self.scorer = RemoteScorer(endpoint, calibrate=params.get(contract.CFG_CALIBRATE, "true").lower() == "true")
        pb_utils.Logger.log_info(f"{config['name']}: {self.scorer.probe()} (key ${endpoint.key_env} {key})")
        self.meter = Meter(pb_utils, config["name"], Price.from_parameters(params))

    def execute(self, requests):
        responses = []
        for request in requests:
            before = self.scorer.client.usage.snapshot()
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
                pb_utils.Logger.log_error(f"remote llm scorer failed: {exc!r}")
                responses.append(pb_utils.InferenceResponse(error=triton_error(pb_utils, exc, "LLM scoring failed")))
            after = self.scorer.client.usage.snapshot()
            self.meter.record(
                tokens_in=after["prompt_tokens"] - before["prompt_tokens"],
                tokens_out=after["completion_tokens"] - before["completion_tokens"],
                retries=after["retries"] - before["retries"],
            )
        return responses

    def finalize(self):
        self.scorer.close()
