"""Triton glue for an LLM label scorer on CPU (llama.cpp): PROMPT + CANDIDATES -> PROBS.

The logic (prompt tokenization, prefix KV reuse, contextual calibration, truncation) lives in
``cascade.llm.scorer``. One copy of each LLM serves every task.
"""

import json
import time

import triton_python_backend_utils as pb_utils

from cascade import contract, crash
from cascade.errors import check_numpy
from cascade.llm.gguf import gguf_path
from cascade.llm.meter import Meter, Price
from cascade.llm.scorer import LlamaScorer
from cascade.llm.scorer_io import score_request
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
            responses.append(score_request(pb_utils, request, self.scorer))
            self.meter.record(tokens_in=self.scorer.evaluated_tokens - tokens, cpu_s=time.process_time() - cpu)
        return responses

    def finalize(self):
        crash.disarm()  # unloaded: a fault while the process exits is no crash of serving
