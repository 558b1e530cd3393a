"""Triton glue for ``llm_generate``: a decoupled model that streams free-form text, one piece per response.

The ``runtime`` parameter picks the profile: ``llama_cpp`` (CPU, a packaged GGUF) or ``tensorrt_llm`` (GPU,
streaming BLS over the ``tensorrt_llm`` model; **unverified**, docs/gpu-llm.md). ``execute`` only checks the
input and hands the request to a worker thread, so streams do not wait for each other on GPU; llama.cpp has
one context, so the CPU profile has one worker. Every response carries one ``TEXT_OUTPUT`` piece, the last
one has the COMPLETE_FINAL flag; bad input gets one INVALID_ARG response that closes the stream.
The logic lives in ``cascade.generate``.
"""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from cascade import contract
from cascade.errors import CascadeError, ConfigError, InvalidInput, TierFailure, check_numpy, triton_error
from cascade.generate import (
    CONTEXT_TOKENS,
    IncrementalDetokenizer,
    LlamaGenerator,
    new_tokens,
    parse_request,
    pieces_from_token_stream,
    with_last,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _cpu_memory():
    preferred = getattr(pb_utils, "PreferredMemory", None)
    kind = getattr(pb_utils, "TRITONSERVER_MEMORY_CPU", None)
    return {"preferred_memory": preferred(kind, 0)} if preferred is not None and kind is not None else {}


def _text(piece: str):
    return pb_utils.InferenceResponse(
        [pb_utils.Tensor(contract.TEXT_OUTPUT.name, np.array([piece.encode("utf-8")], dtype=np.object_))]
    )


def _cancelled_error():
    code = getattr(pb_utils.TritonError, "CANCELLED", pb_utils.TritonError.UNAVAILABLE)
    return pb_utils.TritonError("request cancelled", code)


class TritonPythonModel:
    def initialize(self, args):
        check_numpy()
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise ConfigError("llm_generate must be decoupled (model_transaction_policy { decoupled: true })")
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.default_max_tokens = int(params.get(contract.CFG_DEFAULT_MAX_TOKENS, contract.DEFAULT_GENERATE_MAX_TOKENS))
        self.max_tokens_limit = int(params.get(contract.CFG_MAX_TOKENS_LIMIT, contract.GENERATE_MAX_TOKENS_LIMIT))
        self.runtime = params.get(contract.CFG_RUNTIME, contract.RUNTIME_LLAMA_CPP)
        if self.runtime == contract.RUNTIME_LLAMA_CPP:
            from cascade.gguf import gguf_path
            from cascade.sizing import llm_model_threads

            threads = llm_model_threads(params.get(contract.CFG_NUM_THREADS))
            pb_utils.Logger.log_info(f"{config['name']}: llama.cpp n_threads={threads}")
            self.llama = LlamaGenerator(
                gguf_path(params[contract.CFG_LLM_MODEL]),
                n_ctx=int(params.get(contract.CFG_N_CTX, "1024")),
                n_threads=threads,
            )
            workers = 1  # one llama.cpp context: streams run one after the other
        elif self.runtime == contract.RUNTIME_TRTLLM:
            from cascade.trtllm import load_tokenizer

            self.tokenizer = load_tokenizer(params[contract.CFG_TOKENIZER_DIR])
            self.max_input_len = int(params[contract.CFG_MAX_INPUT_LEN])
            self.trtllm_model = params.get(contract.CFG_TRTLLM_MODEL, contract.TRTLLM_MODEL)
            self.memory = _cpu_memory()
            workers = contract.LLM_MAX_BATCH_SIZE  # the engine batches concurrent streams in flight
        else:
            raise ConfigError(f"unknown runtime {self.runtime!r}")
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm_generate")

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                max_tokens = pb_utils.get_input_tensor_by_name(request, contract.MAX_TOKENS.name)
                parsed = parse_request(
                    pb_utils.get_input_tensor_by_name(request, contract.PROMPT_TEXT.name).as_numpy(),
                    max_tokens.as_numpy() if max_tokens is not None else None,
                    self.default_max_tokens,
                    self.max_tokens_limit,
                )
            except CascadeError as exc:
                sender.send(pb_utils.InferenceResponse(error=triton_error(pb_utils, exc)), flags=FINAL)
                continue
            self.pool.submit(self._stream, request, sender, parsed)
        return None

    def _stream(self, request, sender, parsed):
        try:
            for piece, last in with_last(self._pieces(parsed, request.is_cancelled)):
                if request.is_cancelled():
                    sender.send(pb_utils.InferenceResponse(error=_cancelled_error()), flags=FINAL)
                    return
                sender.send(_text(piece), flags=FINAL if last else 0)
        except Exception as exc:  # noqa: BLE001 - one error response closes the stream
            if not isinstance(exc, CascadeError):
                pb_utils.Logger.log_error(f"llm_generate failed: {exc!r}")
            sender.send(pb_utils.InferenceResponse(error=triton_error(pb_utils, exc, "generation failed")), flags=FINAL)

    def _pieces(self, parsed, cancelled):
        if self.runtime == contract.RUNTIME_LLAMA_CPP:
            return self.llama.stream(parsed.prompt, parsed.max_tokens, cancelled)
        return self._trtllm_pieces(parsed, cancelled)

    def _trtllm_pieces(self, parsed, cancelled):
        from cascade.trtllm import generate_inputs

        tok = self.tokenizer
        ids = tok.special_prefix + tok.encode(parsed.prompt, parse_special=True)
        if len(ids) > self.max_input_len:
            raise InvalidInput(
                f"the prompt ({len(ids)} tokens) exceeds the engine's max_input_len of {self.max_input_len}"
            )
        inputs = generate_inputs(ids, parsed.max_tokens, tok.eos_id, tok.pad_id)
        request = pb_utils.InferenceRequest(
            model_name=self.trtllm_model,
            inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
            requested_output_names=[contract.TRTLLM_OUTPUT_IDS.name, contract.TRTLLM_SEQUENCE_LENGTH.name],
            **self.memory,
        )
        responses = request.exec(decoupled=True)

        def batches():
            for response in responses:
                if response.has_error():
                    raise TierFailure(f"{self.trtllm_model}: {response.error().message()}")
                out = pb_utils.get_output_tensor_by_name(response, contract.TRTLLM_OUTPUT_IDS.name)
                if out is None:  # an empty final-flag response
                    continue
                length = pb_utils.get_output_tensor_by_name(response, contract.TRTLLM_SEQUENCE_LENGTH.name)
                yield new_tokens(out.as_numpy(), length.as_numpy() if length is not None else None)
                if cancelled():
                    cancel = getattr(responses, "cancel", None)
                    if cancel is not None:
                        cancel()
                    return

        detok = IncrementalDetokenizer(tok.decode, context=ids[-CONTEXT_TOKENS:])
        return pieces_from_token_stream(batches(), detok, tok.eos_id)

    def finalize(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
