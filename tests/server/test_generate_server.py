"""The streaming text endpoint ``llm_generate``: the CPU profile streamed by a real tritonserver over gRPC (SmolLM2
GGUF through llama.cpp)."""

import queue
import uuid

import numpy as np
import pytest

from cascade import contract

# --------------------------------------------------------------------------------------------- server


@pytest.fixture(scope="module")
def generate_server(tmp_path_factory):
    import llama_cpp  # noqa: F401  (a required dependency: missing, these tests fail)

    from cascade.llm.gguf import MODEL_SMOLLM2, gguf_path
    from cascade.repository.trtllm_config import cpu_generate_spec
    from cascade.repository.writer import RepositoryWriter
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports

    gguf_path(MODEL_SMOLLM2)  # fails early with a clear message when the model package is missing
    repo = tmp_path_factory.mktemp("generate") / "cpu"
    with RepositoryWriter(repo) as writer:  # llm_generate alone (the build writes it with the LLM scorers)
        writer.add(cpu_generate_spec(MODEL_SMOLLM2, n_ctx=512, num_threads=1))  # robust on a busy 2-core box
    http, grpc, metrics = free_ports(3)
    with TritonServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)) as srv:
        yield srv


def _stream(server, prompt: bytes, max_tokens: int | None = None, timeout_s: float = 60.0):
    """Send one prompt on a gRPC stream; return (text pieces, final flags, errors) until the stream closes."""
    import tritonclient.grpc as grpcclient

    results: queue.Queue = queue.Queue()
    inputs = [grpcclient.InferInput(contract.PROMPT_TEXT.name, [1, 1], contract.PROMPT_TEXT.datatype)]
    inputs[0].set_data_from_numpy(np.array([[prompt]], dtype=np.object_))
    if max_tokens is not None:
        inputs.append(grpcclient.InferInput(contract.MAX_TOKENS.name, [1, 1], contract.MAX_TOKENS.datatype))
        inputs[1].set_data_from_numpy(np.array([[max_tokens]], dtype=np.int32))
    pieces, finals, errors = [], [], []
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        client.async_stream_infer(
            contract.LLM_GENERATE_MODEL, inputs, request_id=uuid.uuid4().hex, enable_empty_final_response=True
        )
        while True:
            result, error = results.get(timeout=timeout_s)
            if error is not None:
                errors.append(error)
                break
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            text = result.as_numpy(contract.TEXT_OUTPUT.name)
            if text is not None:
                assert text.shape == (1, 1)
                pieces.append(text[0, 0].decode("utf-8"))
                finals.append(final)
            if final:
                break
        client.stop_stream()
    return pieces, finals, errors


@pytest.mark.server
def test_llm_generate_streams_pieces_over_grpc(generate_server):
    pieces, finals, errors = _stream(generate_server, b"The capital of France is", max_tokens=8)
    assert not errors
    assert len(pieces) >= 3, pieces  # several responses, one piece each
    assert finals[-1] and not any(finals[:-1])  # the last piece carries COMPLETE_FINAL
    assert "".join(pieces).strip()
    assert len(pieces) <= 8


def _http_generate(server, prompt: str, max_tokens: int | None = None):
    """POST Triton's generate_stream extension: (HTTP status, body)."""
    import json
    import urllib.error
    import urllib.request

    payload = {contract.PROMPT_TEXT.name: prompt}
    if max_tokens is not None:
        payload[contract.MAX_TOKENS.name] = max_tokens
    url = f"{server.http_url}/v2/models/{contract.LLM_GENERATE_MODEL}/generate_stream"
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.server
def test_llm_generate_rejects_bad_input(generate_server):
    # One error response closes the stream. A gRPC stream carries only its message; the status code
    # (INVALID_ARG) shows over HTTP, as 400.
    for prompt, max_tokens, message in (
        (b"", None, "empty prompt"),
        (b"   ", None, "empty prompt"),
        (b"\xff", None, "UTF-8"),
        (b"hi", 0, "MAX_TOKENS"),
    ):
        pieces, _, errors = _stream(generate_server, prompt, max_tokens)
        assert not pieces and len(errors) == 1 and message in errors[0].message()
    assert _http_generate(generate_server, "")[0] == 400
    assert _http_generate(generate_server, "hi", 0)[0] == 400
    # the server keeps serving
    pieces, finals, errors = _stream(generate_server, b"One, two, three,", max_tokens=4)
    assert pieces and finals[-1] and not errors
    status, body = _http_generate(generate_server, "One, two, three,", 4)
    assert status == 200 and body.count("data: ") >= 1
