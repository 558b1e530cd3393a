"""The LLM Python backends' logic below Triton (cascade.llm.generate_io for ``llm_generate``, cascade.llm.trtllm_bls
for the
GPU ``llm_large``) and their Triton glue (python_backends/llm_generate, python_backends/llm_trtllm), with a fake
``pb_utils`` and a fake ``tensorrt_llm`` model: no GPU, no engine, no model file."""

import asyncio
import importlib.util
import json
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from fake_pb import (  # the gate tests' fake pb_utils: the same error and response
    InferenceResponse,
    TritonError,
    fake_arm,
    instance,
)
from tokenizers import Tokenizer, models, pre_tokenizers

from cascade import contract
from cascade.errors import ConfigError, InvalidInput, TierFailure
from cascade.llm import trtllm, trtllm_bls
from cascade.llm.generate_io import GenerateIO
from cascade.llm.prompts import Prompt
from cascade.llm.trtllm import HFTokenizer, calibrate
from cascade.llm.trtllm_bls import TrtllmScorer, cpu_memory, host
from cascade.paths import BACKENDS_DIR

WORDS = ["<eos>", "[UNK]", "Review:", "great", "dull", "film", "Sentiment:", "positive", "negative", "N/A", "hello"]
VOCAB = {w: i for i, w in enumerate(WORDS)}
EOS, GREAT, POSITIVE, NEGATIVE = VOCAB["<eos>"], VOCAB["great"], VOCAB["positive"], VOCAB["negative"]
LOGITS, OUTPUT_IDS = contract.TRTLLM_GENERATION_LOGITS.name, contract.TRTLLM_OUTPUT_IDS.name
SEQUENCE_LENGTH = contract.TRTLLM_SEQUENCE_LENGTH.name
FINAL = 1


@pytest.fixture
def tokenizer(monkeypatch):
    """A word-level tokenizer (one token per word), loaded in place of the engine's tokenizer folder."""
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = HFTokenizer(tok, eos_id=EOS)
    loaded = []

    def load(path):
        loaded.append(path)
        return hf

    monkeypatch.setattr(trtllm, "load_tokenizer", load)
    monkeypatch.setattr(trtllm_bls, "load_tokenizer", load)
    hf.loaded = loaded
    return hf


# --- a fake triton_python_backend_utils and tensorrt_llm ------------------------------------------------------------
class Tensor:
    def __init__(self, name, array):
        self._name, self.array = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self.array

    def is_cpu(self):
        return True


class Responses(list):
    """A decoupled BLS answer: its responses, and ``cancel`` (counted)."""

    cancelled = 0

    def cancel(self):
        self.cancelled += 1


class Sender:
    def __init__(self):
        self.sent, self.done = [], threading.Event()

    def send(self, response, flags=0):
        self.sent.append((response, flags))
        if flags == FINAL:
            self.done.set()


class Request:
    """A request to the LLM model: its input tensors and parameters; ``cancel_after`` is_cancelled() calls."""

    def __init__(self, inputs, parameters="", cancel_after=None):
        self.inputs = {k: Tensor(k, v) for k, v in inputs.items()}
        self._parameters, self.sender, self.cancel_after, self.checks = parameters, Sender(), cancel_after, 0

    def parameters(self):
        return self._parameters

    def is_cancelled(self):
        self.checks += 1
        return self.cancel_after is not None and self.checks > self.cancel_after

    def get_response_sender(self):
        return self.sender


def fake_pb(engine):
    """A ``pb_utils`` whose BLS requests go to ``engine(inputs) -> Responses``."""
    logs, sent = [], []

    class InferenceRequest:
        def __init__(self, model_name, inputs, requested_output_names, **kwargs):
            self.model_name, self.outputs, self.kwargs = model_name, requested_output_names, kwargs
            self.inputs = {t.name(): t.as_numpy() for t in inputs}

        def exec(self, decoupled=False):
            assert decoupled
            sent.append(self)
            return engine(self.inputs)

        async def async_exec(self, decoupled=False):
            return self.exec(decoupled)

    def by_name(owner, name):
        tensors = owner.inputs if isinstance(owner, Request) else {t.name(): t for t in owner.outputs}
        return tensors.get(name)

    return SimpleNamespace(
        Tensor=Tensor,
        TritonError=TritonError,
        InferenceResponse=InferenceResponse,
        InferenceRequest=InferenceRequest,
        PreferredMemory=lambda kind, device: (kind, device),
        TRITONSERVER_MEMORY_CPU="CPU",
        TRITONSERVER_RESPONSE_COMPLETE_FINAL=FINAL,
        get_input_tensor_by_name=by_name,
        get_output_tensor_by_name=by_name,
        using_decoupled_model_transaction_policy=lambda config: config.get("model_transaction_policy", {}).get(
            "decoupled", False
        ),
        Logger=SimpleNamespace(
            log_info=lambda m: logs.append(("info", m)),
            log_warn=lambda m: logs.append(("warn", m)),
            log_error=lambda m: logs.append(("error", m)),
        ),
        logs=logs,
        sent=sent,
    )


def scoring_engine(inputs, argmax_token=None):
    """First-step logits: "positive" leads by 2 after a row with "great", "negative" by 1 otherwise; a content-free
    row leans 1 towards "positive". The generated token is the argmax unless ``argmax_token`` says otherwise."""
    ids = inputs[contract.TRTLLM_INPUT_IDS.name].reshape(-1).tolist()
    assert inputs[contract.TRTLLM_REQUEST_OUTPUT_LEN.name].item() == 1
    logits = np.zeros(len(WORDS), np.float32)
    if GREAT in ids:
        logits[POSITIVE] = 2.0
    elif VOCAB["dull"] in ids:
        logits[NEGATIVE] = 1.0
    else:
        logits[POSITIVE] = 1.0
    token = int(logits.argmax()) if argmax_token is None else argmax_token
    answer = [Tensor(LOGITS, logits[None, None, None, :]), Tensor(OUTPUT_IDS, np.array([[[token]]], np.int32))]
    return Responses([InferenceResponse(answer), InferenceResponse()])  # then an empty final-flag response


SCORER_PARAMS = {contract.CFG_TOKENIZER_DIR: "/engine/tokenizer", contract.CFG_MAX_INPUT_LEN: "16"}
ROWS = [Prompt("Review:", "great film", " Sentiment:"), Prompt("Review:", "dull film", " Sentiment:")]
CANDS = ("negative", "positive")


def softmax(x):
    e = np.exp(np.asarray(x, np.float64) - np.max(x))
    return e / e.sum()


# --- cascade.llm.trtllm_bls -------------------------------------------------------------------------------------------
def test_cpu_memory_and_host():
    pb = fake_pb(scoring_engine)
    assert cpu_memory(pb) == {"preferred_memory": ("CPU", 0)}
    assert cpu_memory(SimpleNamespace()) == {}  # an older pb_utils without PreferredMemory
    assert host(Tensor("x", [1.0, 2.0])).tolist() == [1.0, 2.0]


def test_scorer_reads_its_parameters(tokenizer):
    scorer = TrtllmScorer(fake_pb(scoring_engine), SCORER_PARAMS | {contract.CFG_CALIBRATE: "False"})
    assert tokenizer.loaded == ["/engine/tokenizer"] and scorer.max_input_len == 16 and not scorer.calibrate
    assert scorer.trtllm_model == contract.TRTLLM_MODEL and scorer.memory == {"preferred_memory": ("CPU", 0)}
    assert TrtllmScorer(fake_pb(scoring_engine), SCORER_PARAMS).calibrate


def test_scorer_probs_raw_and_calibrated(tokenizer):
    pb = fake_pb(scoring_engine)
    scorer = TrtllmScorer(pb, SCORER_PARAMS)
    raw, truncated = asyncio.run(scorer.probs(ROWS, CANDS, calibrate_override=False))
    assert raw.dtype == np.float32 and truncated.tolist() == [False, False]
    np.testing.assert_allclose(raw, [softmax([0.0, 2.0]), softmax([1.0, 0.0])], rtol=1e-6)
    assert len(pb.sent) == 2 and all(r.model_name == contract.TRTLLM_MODEL for r in pb.sent)
    assert pb.sent[0].inputs[contract.TRTLLM_INPUT_IDS.name].reshape(-1).tolist() == [
        VOCAB[w] for w in ("Review:", "great", "film", "Sentiment:")
    ]
    probs, _ = asyncio.run(scorer.probs(ROWS, CANDS))  # the model's default: calibrated
    prior = softmax([0.0, 1.0])  # both content-free rows ("N/A", "") lean towards "positive"
    np.testing.assert_allclose(probs, calibrate(raw, np.stack([prior, prior])), rtol=1e-6)
    assert len(pb.sent) == 2 + 2 + 2  # the prior's two rows once, then cached
    assert scorer.first_tokens == {(" Sentiment:", CANDS): (NEGATIVE, POSITIVE)}
    assert not pb.logs


def test_scorer_flags_a_truncated_row(tokenizer):
    scorer = TrtllmScorer(fake_pb(scoring_engine), SCORER_PARAMS | {contract.CFG_MAX_INPUT_LEN: "3"})
    _, truncated = asyncio.run(scorer.probs(ROWS[:1], CANDS, calibrate_override=False))
    assert truncated.tolist() == [True]


def test_scorer_errors(tokenizer):
    down = Responses([InferenceResponse(error=TritonError("engine down"))])
    failing = TrtllmScorer(fake_pb(lambda inputs: down), SCORER_PARAMS)
    with pytest.raises(TierFailure, match="tensorrt_llm: engine down"):
        asyncio.run(failing.first_step_logits([1, 2]))
    silent = TrtllmScorer(fake_pb(lambda inputs: Responses([InferenceResponse()])), SCORER_PARAMS)
    with pytest.raises(TierFailure, match="gather_generation_logits"):
        asyncio.run(silent.first_step_logits([1, 2]))


def test_scorer_warns_once_when_the_logits_are_not_the_first_step(tokenizer):
    pb = fake_pb(lambda inputs: scoring_engine(inputs, argmax_token=EOS))
    scorer = TrtllmScorer(pb, SCORER_PARAMS)
    asyncio.run(scorer.probs(ROWS, CANDS, calibrate_override=False))
    assert [level for level, _ in pb.logs] == ["warn"] and "argmax of generation_logits" in pb.logs[0][1]
    assert scorer.warned


# --- cascade.llm.generate_io ------------------------------------------------------------------------------------------
def generate_config(**params):
    defaults = {
        contract.CFG_RUNTIME: contract.RUNTIME_TRTLLM,
        contract.CFG_TOKENIZER_DIR: "/engine/tokenizer",
        contract.CFG_MAX_INPUT_LEN: "8",
    }
    parameters = {k: {"string_value": v} for k, v in (defaults | params).items()}
    return {
        "name": contract.LLM_GENERATE_MODEL,
        "parameters": parameters,
        "model_transaction_policy": {"decoupled": True},
    }


def streaming_engine(*pieces, error=None):
    """A streamed generation: one response per list of new token ids, then an empty final-flag response."""

    def engine(inputs):
        assert inputs[contract.TRTLLM_STREAMING.name].item()
        out = [
            InferenceResponse(
                [Tensor(OUTPUT_IDS, np.array([[ids]], np.int32)), Tensor(SEQUENCE_LENGTH, np.array([len(ids)]))]
            )
            for ids in pieces
        ]
        if error:
            out.append(InferenceResponse(error=TritonError(error)))
        return Responses([*out, InferenceResponse()])

    return engine


def prompt_request(text=b"Review: great", max_tokens=None, **kwargs):
    inputs = {contract.PROMPT_TEXT.name: np.array([text], dtype=np.object_)}
    if max_tokens is not None:
        inputs[contract.MAX_TOKENS.name] = np.array([max_tokens], np.int32)
    return Request(inputs, **kwargs)


def test_generate_io_reads_its_config(tokenizer):
    io = GenerateIO(fake_pb(streaming_engine()), generate_config())
    assert io.runtime == contract.RUNTIME_TRTLLM and io.workers == contract.LLM_MAX_BATCH_SIZE
    assert io.default_max_tokens == contract.DEFAULT_GENERATE_MAX_TOKENS
    assert io.max_tokens_limit == contract.GENERATE_MAX_TOKENS_LIMIT
    assert io.max_input_len == 8 and io.trtllm_model == contract.TRTLLM_MODEL and tokenizer.loaded
    with pytest.raises(ConfigError, match="unknown runtime 'onnx'"):
        GenerateIO(fake_pb(streaming_engine()), generate_config(runtime="onnx"))


def test_generate_io_parses_a_request(tokenizer):
    config = generate_config(**{contract.CFG_DEFAULT_MAX_TOKENS: "5", contract.CFG_MAX_TOKENS_LIMIT: "9"})
    io = GenerateIO(fake_pb(streaming_engine()), config)
    assert io.parse(prompt_request()).max_tokens == 5
    parsed = io.parse(prompt_request(max_tokens=9))
    assert (parsed.prompt, parsed.max_tokens) == ("Review: great", 9)
    with pytest.raises(InvalidInput, match="between 1 and 9"):
        io.parse(prompt_request(max_tokens=10))
    with pytest.raises(InvalidInput, match="empty prompt"):
        io.parse(prompt_request(b"  "))


def test_generate_io_streams_text_from_tensorrt_llm(tokenizer):
    pb = fake_pb(streaming_engine([VOCAB["great"]], [VOCAB["film"], EOS, VOCAB["hello"]]))
    io = GenerateIO(pb, generate_config())
    parsed = io.parse(prompt_request(max_tokens=4))
    assert "".join(io.pieces(parsed, lambda: False)) == " great film"  # stops at the end id
    (sent,) = pb.sent
    assert sent.inputs[contract.TRTLLM_INPUT_IDS.name].reshape(-1).tolist() == [VOCAB["Review:"], GREAT]
    assert sent.inputs[contract.TRTLLM_REQUEST_OUTPUT_LEN.name].item() == 4
    assert sent.inputs[contract.TRTLLM_END_ID.name].item() == EOS
    assert sent.outputs == [OUTPUT_IDS, SEQUENCE_LENGTH] and sent.kwargs == {"preferred_memory": ("CPU", 0)}


def test_generate_io_stream_errors_and_cancellation(tokenizer):
    io = GenerateIO(fake_pb(streaming_engine([GREAT], error="engine down")), generate_config())
    with pytest.raises(TierFailure, match="tensorrt_llm: engine down"):
        list(io.pieces(io.parse(prompt_request()), lambda: False))
    with pytest.raises(InvalidInput, match="max_input_len of 8"):
        list(io.pieces(io.parse(prompt_request(b"hello " * 9)), lambda: False))
    engine = streaming_engine([GREAT], [VOCAB["film"]])
    answers = []
    io = GenerateIO(fake_pb(lambda inputs: answers.append(engine(inputs)) or answers[-1]), generate_config())
    assert "".join(io.pieces(io.parse(prompt_request()), lambda: True)) == " great"  # cancelled after one batch
    assert answers[0].cancelled == 1


# --- the Triton glue over the fake pb_utils -----------------------------------------------------------------------
def load_glue(monkeypatch, backend, pb):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location(f"{backend}_model_under_test", BACKENDS_DIR / backend / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TritonPythonModel()


def test_llm_trtllm_glue_answers_probs_and_errors(monkeypatch, tokenizer):
    pb = fake_pb(scoring_engine)
    model = load_glue(monkeypatch, "llm_trtllm", pb)
    params = {k: {"string_value": v} for k, v in SCORER_PARAMS.items()}
    model.initialize({"model_config": json.dumps({"name": "llm_large", "parameters": params}), **instance("llm_large")})
    prompt = np.array([[p.prefix.encode(), p.content.encode(), p.suffix.encode()] for p in ROWS], dtype=np.object_)
    cands = np.array([[c.encode() for c in CANDS]] * 2, dtype=np.object_)
    good = Request(
        {contract.PROMPT.name: prompt, contract.CANDIDATES.name: cands}, json.dumps({contract.PARAM_CALIBRATE: False})
    )
    bad = Request({contract.PROMPT.name: prompt[:, :2], contract.CANDIDATES.name: cands})
    ok, error = asyncio.run(model.execute([good, bad]))
    probs = {t.name(): t.as_numpy() for t in ok.outputs}
    np.testing.assert_allclose(probs[contract.PROBS.name], [softmax([0.0, 2.0]), softmax([1.0, 0.0])], rtol=1e-6)
    assert probs[contract.TRUNCATED.name].tolist() == [False, False]
    assert error.error().code() == TritonError.INVALID_ARG and "[n, 3]" in error.error().message()


def test_llm_generate_glue_streams_pieces(monkeypatch, tokenizer):
    pb = fake_pb(streaming_engine([GREAT], [VOCAB["film"]]))
    model = load_glue(monkeypatch, "llm_generate", pb)
    config = generate_config()
    model.initialize({"model_config": json.dumps(config), **instance(config["name"])})
    good, bad, cancelled = prompt_request(), prompt_request(max_tokens=0), prompt_request(cancel_after=0)
    assert model.execute([good, bad, cancelled]) is None
    for request in (good, bad, cancelled):
        assert request.sender.done.wait(10)
    model.finalize()
    pieces = [(r.outputs[0].as_numpy()[0].decode(), flags) for r, flags in good.sender.sent]
    assert pieces == [(" great", 0), (" film", FINAL)]
    ((response, flags),) = bad.sender.sent
    assert flags == FINAL and response.error().code() == TritonError.INVALID_ARG
    ((response, flags),) = cancelled.sender.sent
    assert flags == FINAL and response.error().code() == TritonError.CANCELLED
    config["model_transaction_policy"] = {"decoupled": False}
    with pytest.raises(ConfigError, match="must be decoupled"):
        load_glue(monkeypatch, "llm_generate", pb).initialize(
            {"model_config": json.dumps(config), **instance(config["name"])}
        )


@pytest.fixture(autouse=True)
def no_faulthandler_file(monkeypatch):
    """The glue arms a crash record in initialize (tests/unit/test_crash.py tests that in child processes)."""
    monkeypatch.setattr("cascade.crash.arm", fake_arm)
    monkeypatch.setattr("cascade.crash.disarm", lambda path=None: None)
