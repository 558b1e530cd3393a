"""Triton glue for ``llm_generate``: a decoupled model that streams free-form text, one piece per response.

The ``runtime`` parameter picks the profile: ``llama_cpp`` (CPU, a packaged GGUF) or ``tensorrt_llm`` (GPU,
streaming BLS over the ``tensorrt_llm`` model; **unverified**, docs/gpu-llm.md). ``execute`` only checks the
input and hands the request to a worker thread, so streams do not wait for each other on GPU; llama.cpp has
one context, so the CPU profile has one worker. Every response carries one ``TEXT_OUTPUT`` piece, the last
one has the COMPLETE_FINAL flag; bad input gets one INVALID_ARG response that closes the stream.
The logic lives in ``cascade.llm.generate_io`` (the runtimes, ``pb_utils`` passed in) and ``cascade.llm.generate``.
"""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from cascade import contract, crash
from cascade.errors import CascadeError, ConfigError, check_numpy, triton_error
from cascade.llm.generate import with_last
from cascade.llm.generate_io import GenerateIO

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _text(piece: str):
    return pb_utils.InferenceResponse(
        [pb_utils.Tensor(contract.TEXT_OUTPUT.name, np.array([piece.encode("utf-8")], dtype=np.object_))]
    )


def _cancelled_error():
    code = getattr(pb_utils.TritonError, "CANCELLED", pb_utils.TritonError.UNAVAILABLE)
    return pb_utils.TritonError("request cancelled", code)


class TritonPythonModel:
    def initialize(self, args):
        crash.arm(args["model_name"], args["model_instance_name"])  # a record of a fatal signal
        check_numpy()
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise ConfigError("llm_generate must be decoupled (model_transaction_policy { decoupled: true })")
        self.io = GenerateIO(pb_utils, config)
        self.pool = ThreadPoolExecutor(max_workers=self.io.workers, thread_name_prefix="llm_generate")

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                parsed = self.io.parse(request)
            except CascadeError as exc:
                sender.send(pb_utils.InferenceResponse(error=triton_error(pb_utils, exc)), flags=FINAL)
                continue
            self.pool.submit(self._stream, request, sender, parsed)
        return None

    def _stream(self, request, sender, parsed):
        try:
            for piece, last in with_last(self.io.pieces(parsed, request.is_cancelled)):
                if request.is_cancelled():
                    sender.send(pb_utils.InferenceResponse(error=_cancelled_error()), flags=FINAL)
                    return
                sender.send(_text(piece), flags=FINAL if last else 0)
        except Exception as exc:  # noqa: BLE001 - one error response closes the stream
            if not isinstance(exc, CascadeError):
                pb_utils.Logger.log_error(f"llm_generate failed: {exc!r}")
            sender.send(pb_utils.InferenceResponse(error=triton_error(pb_utils, exc, "generation failed")), flags=FINAL)

    def finalize(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
        crash.disarm()
