"""The ``llm_generate`` model's work below Triton: its settings from the model config, the parsing of a request, and
the text pieces of one stream on either runtime: llama.cpp on CPU (:class:`cascade.llm.generate.LlamaGenerator`), or a
streaming BLS over ``tensorrt_llm`` on GPU, detokenized as the token ids come (:mod:`cascade.llm.generate`).

No Triton import: ``python_backends/llm_generate/model.py`` passes its ``triton_python_backend_utils`` module in
(:class:`GenerateIO`), as the gate does (cascade.gate.request_io).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from cascade import contract
from cascade.errors import ConfigError, InvalidInput, TierFailure
from cascade.llm.generate import (
    CONTEXT_TOKENS,
    GenerateRequest,
    IncrementalDetokenizer,
    LlamaGenerator,
    new_tokens,
    parse_request,
    pieces_from_token_stream,
)


class GenerateIO:
    """One ``llm_generate`` instance's runtime, from its config's parameters; ``workers`` is how many streams may
    run at once (one llama.cpp context on CPU; the engine batches concurrent streams in flight on GPU)."""

    def __init__(self, pb_utils: Any, config: dict) -> None:
        self.pb = pb_utils
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.default_max_tokens = int(params.get(contract.CFG_DEFAULT_MAX_TOKENS, contract.DEFAULT_GENERATE_MAX_TOKENS))
        self.max_tokens_limit = int(params.get(contract.CFG_MAX_TOKENS_LIMIT, contract.GENERATE_MAX_TOKENS_LIMIT))
        self.runtime = params.get(contract.CFG_RUNTIME, contract.RUNTIME_LLAMA_CPP)
        if self.runtime == contract.RUNTIME_LLAMA_CPP:
            from cascade.llm.gguf import gguf_path
            from cascade.runtime.sizing import llm_model_threads

            threads = llm_model_threads(params.get(contract.CFG_NUM_THREADS))
            pb_utils.Logger.log_info(f"{config['name']}: llama.cpp n_threads={threads}")
            self.llama = LlamaGenerator(
                gguf_path(params[contract.CFG_LLM_MODEL]),
                n_ctx=int(params.get(contract.CFG_N_CTX, "1024")),
                n_threads=threads,
            )
            self.workers = 1  # one llama.cpp context: streams run one after the other
        elif self.runtime == contract.RUNTIME_TRTLLM:
            from cascade.llm.trtllm import load_tokenizer
            from cascade.llm.trtllm_bls import cpu_memory

            self.tokenizer = load_tokenizer(params[contract.CFG_TOKENIZER_DIR])
            self.max_input_len = int(params[contract.CFG_MAX_INPUT_LEN])
            self.trtllm_model = params.get(contract.CFG_TRTLLM_MODEL, contract.TRTLLM_MODEL)
            self.memory = cpu_memory(pb_utils)
            self.workers = contract.LLM_MAX_BATCH_SIZE  # the engine batches concurrent streams in flight
        else:
            raise ConfigError(f"unknown runtime {self.runtime!r}")

    def parse(self, request) -> GenerateRequest:
        """The request's prompt and token budget; InvalidInput when malformed."""
        pb_utils = self.pb
        max_tokens = pb_utils.get_input_tensor_by_name(request, contract.MAX_TOKENS.name)
        return parse_request(
            pb_utils.get_input_tensor_by_name(request, contract.PROMPT_TEXT.name).as_numpy(),
            max_tokens.as_numpy() if max_tokens is not None else None,
            self.default_max_tokens,
            self.max_tokens_limit,
        )

    def pieces(self, parsed: GenerateRequest, cancelled: Callable[[], bool]) -> Iterator[str]:
        """The text pieces of the completion of ``parsed.prompt``; stops early once ``cancelled()``."""
        if self.runtime == contract.RUNTIME_LLAMA_CPP:
            return self.llama.stream(parsed.prompt, parsed.max_tokens, cancelled)
        return self._trtllm_pieces(parsed, cancelled)

    def _trtllm_pieces(self, parsed, cancelled):
        from cascade.llm.trtllm import generate_inputs

        pb_utils = self.pb
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
