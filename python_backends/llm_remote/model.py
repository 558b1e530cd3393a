"""Triton glue for an LLM label scorer on an OpenAI-compatible endpoint: PROMPT + CANDIDATES -> PROBS.

The logic (the probe, the scoring modes, calibration, retries, the key from the environment) lives in
``cascade.llm.remote`` and ``cascade.llm.openai_http``; the counters in ``cascade.llm.meter``. A failed call is a
failed tier to the gate (UNAVAILABLE), never a traceback.
"""

import json

import triton_python_backend_utils as pb_utils

from cascade import contract
from cascade.errors import check_numpy
from cascade.llm.meter import Meter, Price
from cascade.llm.remote import RemoteScorer, endpoint_from_parameters
from cascade.llm.scorer_io import score_request


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
            responses.append(score_request(pb_utils, request, self.scorer, "remote llm scorer", log_all=True))
            after = self.scorer.client.usage.snapshot()
            self.meter.record(
                tokens_in=after["prompt_tokens"] - before["prompt_tokens"],
                tokens_out=after["completion_tokens"] - before["completion_tokens"],
                retries=after["retries"] - before["retries"],
            )
        return responses

    def finalize(self):
        self.scorer.close()
