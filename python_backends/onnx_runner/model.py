"""Triton glue for a model served by ONNX Runtime: the embedder and the per-task tiers 0-2.

The logic (tokenization, batching, ONNX Runtime) lives in ``cascade.runtime.onnx_runner``; the tensor names come
from the model's config.pbtxt, which ``cascade.repository.configgen`` generates from ``cascade.contract``.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from cascade import contract, crash
from cascade.errors import CascadeError, check_numpy, triton_error
from cascade.gate.inputs import decode_texts
from cascade.runtime.onnx_runner import OnnxRunner
from cascade.runtime.sizing import onnx_threads, resolve_threads


class TritonPythonModel:
    def initialize(self, args):
        crash.arm(args["model_name"], args["model_instance_name"])  # a record of a fatal signal
        check_numpy()
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_dir = Path(args["model_repository"]) / args["model_version"]
        self.input = config["input"][0]
        self.output = config["output"][0]
        self.text_input = self.input["data_type"] == "TYPE_STRING"
        threads = resolve_threads(params.get(contract.CFG_NUM_THREADS), lambda: onnx_threads(self.text_input))
        pb_utils.Logger.log_info(f"{config['name']}: ONNX Runtime intra-op threads={threads}")
        self.runner = OnnxRunner(
            model_dir,
            onnx_file=params.get(contract.CFG_ONNX_FILE, "model.onnx"),
            num_threads=threads,
        )
        if self.text_input != self.runner.text_input:
            raise pb_utils.TritonModelException(
                f"{config['name']}: input {self.input['name']} is {self.input['data_type']} but the ONNX model "
                f"in {model_dir} {'expects' if self.runner.text_input else 'does not expect'} text"
            )

    def execute(self, requests):
        responses = [None] * len(requests)
        parts, owners = [], []
        for i, request in enumerate(requests):
            try:
                array = pb_utils.get_input_tensor_by_name(request, self.input["name"]).as_numpy()
                if self.text_input:
                    parts.append(decode_texts(array.reshape(-1)))
                else:
                    parts.append(array.astype(np.float32, copy=False))
                owners.append(i)
            except CascadeError as exc:
                responses[i] = pb_utils.InferenceResponse(error=triton_error(pb_utils, exc))
        if owners:
            if self.text_input:
                merged = [text for part in parts for text in part]
            else:
                merged = np.concatenate(parts) if len(parts) > 1 else parts[0]
            try:
                out = self.runner.run(merged)
            except Exception as exc:  # noqa: BLE001 - a message to the caller, the details to the log
                pb_utils.Logger.log_error(f"{self.output['name']}: inference failed: {exc!r}")
                error = triton_error(pb_utils, exc, "inference failed")
                for i in owners:
                    responses[i] = pb_utils.InferenceResponse(error=error)
                return responses
            start = 0
            for i, part in zip(owners, parts, strict=True):
                rows = out[start : start + len(part)]
                start += len(part)
                responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor(self.output["name"], rows)])
        return responses

    def finalize(self):
        crash.disarm()  # unloaded: a fault while the process exits is no crash of serving
