"""Triton glue for the GPU profile's tokenizer step: TEXT -> token arrays, the first step of the ensemble before
an ONNX text model (the embedder, a task's encoder) served by ONNX Runtime with TensorRT. The logic lives in
``cascade.runtime.onnx_runner.TextTokenizer``; the output names come from the model's config.pbtxt."""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from cascade import contract, crash
from cascade.errors import CascadeError, check_numpy, triton_error
from cascade.gate.inputs import decode_texts
from cascade.runtime.onnx_runner import TOKENIZER_FILE, TextTokenizer


class TritonPythonModel:
    def initialize(self, args):
        crash.arm(args["model_name"], args["model_instance_name"])  # a record of a fatal signal
        check_numpy()
        config = json.loads(args["model_config"])
        self.outputs = [output["name"] for output in config["output"]]
        self.tokenizer = TextTokenizer(Path(args["model_repository"]) / args["model_version"] / TOKENIZER_FILE)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                texts = decode_texts(
                    pb_utils.get_input_tensor_by_name(request, contract.TEXT.name).as_numpy().reshape(-1)
                )
                arrays = self.tokenizer(texts)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, arrays[n]) for n in self.outputs]))
            except CascadeError as exc:
                responses.append(pb_utils.InferenceResponse(error=triton_error(pb_utils, exc)))
        return responses

    def finalize(self):
        crash.disarm()  # unloaded: a fault while the process exits is no crash of serving
