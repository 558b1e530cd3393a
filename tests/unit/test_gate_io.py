"""The gate's Triton-facing logic (cascade.bls, cascade.gate_io) with a fake ``pb_utils``: request parsing, the
outputs per wanted set, errors and their status codes, the BLS calls, and the answer through the response sender."""

import importlib.util
import json
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from cascade import contract
from cascade.arrays import Placement
from cascade.bls import BlsCalls, BlsTier, LlmTier
from cascade.errors import CascadeError, ConfigError, InvalidInput, TierBusy, TierFailure
from cascade.escalate import Cancelled
from cascade.gate import GateConfig
from cascade.gate_io import GateIO
from cascade.lanes import Lanes, lane_names
from cascade.metrics import MetricsBuffer
from cascade.paths import BACKENDS_DIR

TEXT, EMBEDDING, PROBS = contract.TEXT.name, contract.EMBEDDING.name, contract.PROBS.name
LABEL, CONFIDENCE, TIER, DEGRADED = (
    t.name for t in (contract.LABEL, contract.CONFIDENCE, contract.TIER, contract.DEGRADED)
)
ALL_OUTPUTS = [LABEL, CONFIDENCE, TIER, PROBS, DEGRADED]
DIM = 8
LOGREG, ENCODER, LLM_SMALL = contract.TIER_LOGREG, contract.TIER_ENCODER, contract.TIER_LLM_SMALL
PROMPT = {"template": "Review: {text}\nSentiment:", "verbalizations": ["negative", "positive"], "calibrate": False}


# --- a fake triton_python_backend_utils -------------------------------------------------------------
class Tensor:
    def __init__(self, name, array):
        self._name, self.array = name, array

    @classmethod
    def from_dlpack(cls, name, array):
        return cls(name, array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self.array


class TritonError:
    INTERNAL, INVALID_ARG, UNAVAILABLE, CANCELLED, NOT_FOUND = (
        "INTERNAL",
        "INVALID_ARG",
        "UNAVAILABLE",
        "CANCELLED",
        "NOT_FOUND",
    )

    def __init__(self, message, code=INTERNAL):
        self._message, self._code = message, code

    def message(self):
        return self._message

    def code(self):
        return self._code


class InferenceResponse:
    def __init__(self, output_tensors=(), error=None):
        self.outputs, self._error = list(output_tensors), error

    def has_error(self):
        return self._error is not None

    def error(self):
        return self._error


class Sender:
    def __init__(self, fail=False):
        self.sent, self.fail, self.event = [], fail, threading.Event()

    def is_cancelled(self):
        return False

    def send(self, response, flags=0):
        self.sent.append((response, flags))
        self.event.set()
        if self.fail:
            raise RuntimeError("client went away")


class Request:
    """A request to the gate: its input tensors, parameters and requested outputs."""

    def __init__(self, inputs=None, parameters="", outputs=ALL_OUTPUTS, sender=None):
        self.inputs = {k: Tensor(k, v) for k, v in (inputs or {}).items()}
        self._parameters, self._outputs, self.sender = parameters, outputs, sender or Sender()

    def parameters(self):
        return self._parameters

    def requested_output_names(self):
        return list(self._outputs)

    def is_cancelled(self):
        return False

    def get_response_sender(self):
        return self.sender


def fake_pb(models: dict):
    """A ``pb_utils`` whose BLS requests call ``models[name](inputs, request)``: an array (the output) or a str
    (the error message of the response)."""
    logs = []
    sent = []

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs, timeout, preferred_memory, **kwargs):
            self.model_name, self.outputs, self.timeout = model_name, requested_output_names, timeout
            self.inputs = {t.name(): t.as_numpy() for t in inputs}
            self.preferred_memory, self.kwargs = preferred_memory, kwargs

        def exec(self):
            sent.append(self)
            answer = models[self.model_name](self.inputs, self)
            if isinstance(answer, str):
                return InferenceResponse(error=TritonError(answer))
            return InferenceResponse([Tensor(self.outputs[0], answer)])

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
        TRITONSERVER_MEMORY_GPU="GPU",
        TRITONSERVER_RESPONSE_COMPLETE_FINAL=1,
        get_input_tensor_by_name=by_name,
        get_output_tensor_by_name=by_name,
        Logger=SimpleNamespace(
            log_info=lambda m: logs.append(("info", m)),
            log_warn=lambda m: logs.append(("warn", m)),
            log_error=lambda m: logs.append(("error", m)),
        ),
        logs=logs,
        sent=sent,
    )


def probs(conf):
    """A fake tier: every row gets ``conf`` for the positive class."""
    return lambda inputs, request: np.tile(
        np.array([1 - conf, conf], np.float32), (len(next(iter(inputs.values()))), 1)
    )


def gate(models, tiers=(LOGREG, ENCODER), repository=None, **config):
    thresholds = {t: 0.9 for t in tiers[:-1]}
    config = GateConfig(task="sst2", labels=("negative", "positive"), tiers=tiers, thresholds=thresholds, **config)
    pb = fake_pb(models)
    calls = BlsCalls(pb, config, Placement(None))
    tier_list = [calls.tier(repository, t) for t in config.tiers]
    metrics = MetricsBuffer(config.task)
    io = GateIO(pb, config, DIM, calls.placement, calls.array, calls.embed, tier_list, metrics, threading.Lock())
    return SimpleNamespace(pb=pb, calls=calls, io=io, metrics=metrics)


def texts(*rows):
    return np.array([r.encode() for r in rows], dtype=np.object_).reshape(-1, 1)


def emb(n, dim=DIM):
    return np.ones((n, dim), np.float32)


@pytest.fixture
def lanes():
    lanes = Lanes(30, lane_names((LOGREG, ENCODER)))
    yield lanes
    lanes.close(timeout_s=2)


def names(response):
    return [t.name() for t in response.outputs]


# --- outputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "wanted", [set(ALL_OUTPUTS), {PROBS}, {LABEL}, {TIER, DEGRADED}, set()], ids=lambda w: "+".join(sorted(w)) or "none"
)
def test_outputs_per_wanted_set(wanted):
    g = gate({})
    p = np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6]], np.float32)
    outputs = g.io.outputs(p, np.array([0, 2, 2], np.int64), np.array([0, 1, 0]), wanted)
    assert [t.name() for t in outputs] == [n for n in ALL_OUTPUTS if n in wanted]  # always in this order
    got = {t.name(): t.as_numpy() for t in outputs}
    expected = {
        LABEL: (np.object_, (3,), [b"positive", b"negative", b"positive"]),
        CONFIDENCE: (np.float32, (3,), [0.8, 0.9, 0.6]),
        TIER: (np.int32, (3,), [0, 2, 2]),
        PROBS: (np.float32, (3, 2), p.tolist()),
        DEGRADED: (np.bool_, (3,), [False, True, False]),
    }
    for name, array in got.items():
        dtype, shape, values = expected[name]
        assert (array.dtype, array.shape) == (dtype, shape), name
        if dtype is np.float32:
            np.testing.assert_allclose(array, values, rtol=1e-6)
        else:
            assert array.tolist() == values, name


# --- parsing -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "inputs, parameters, message",
    [
        ({}, "", "send TEXT \\(and optionally EMBEDDING\\) or EMBEDDING alone"),
        ({EMBEDDING: emb(2)}, "", "TEXT is missing"),
        ({EMBEDDING: emb(2, DIM + 1)}, '{"max_tier": "logreg"}', f"shape \\[n, {DIM}\\]"),
        ({TEXT: texts("a", "b"), EMBEDDING: emb(3)}, "", "EMBEDDING has 3 rows but TEXT has 2"),
        ({TEXT: texts("a", " ")}, "", "TEXT\\[1\\] is empty"),
        ({TEXT: texts("a")}, '{"colour": "red"}', "unknown request parameters"),
        ({TEXT: texts("a")}, '{"min_tier": "encoder", "max_tier": "logreg"}', "is above max_tier"),
        ({TEXT: texts("a")}, '{"return_probs": "maybe"}', "return_probs must be a boolean"),
    ],
)
def test_parse_rejects_bad_requests(inputs, parameters, message):
    with pytest.raises(InvalidInput, match=message):
        gate({}).io.parse(Request(inputs, parameters))


def test_parse_reads_text_embeddings_and_wanted_outputs():
    g = gate({})
    n, rows, embeddings, options, wanted = g.io.parse(Request({TEXT: texts("good", "bad")}, outputs=[LABEL]))
    assert (n, rows, embeddings, wanted) == (2, ["good", "bad"], None, {LABEL})
    request = Request({EMBEDDING: emb(3)}, '{"max_tier": "logreg", "return_probs": true}', outputs=[TIER])
    n, rows, embeddings, options, wanted = g.io.parse(request)
    assert (n, rows, embeddings.shape, options.max_tier, wanted) == (3, None, (3, DIM), LOGREG, {TIER, PROBS})


# --- jobs: answered inline, or through the response sender -------------------------------------
def test_a_confident_request_is_answered_inline(lanes):
    g = gate({"sst2_logreg": probs(0.95)})
    responses = [None]
    request = Request({TEXT: texts("good", "fine"), EMBEDDING: emb(2)}, outputs=[LABEL, TIER])
    lanes.start(g.io.job(request, 0, responses))
    response = responses[0]
    assert not response.has_error() and names(response) == [LABEL, TIER]
    assert response.outputs[0].as_numpy().tolist() == [b"positive", b"positive"]
    assert response.outputs[1].as_numpy().tolist() == [0, 0]
    (call,) = g.pb.sent
    assert call.model_name == "sst2_logreg" and call.outputs == [PROBS] and call.preferred_memory == ("CPU", 0)
    assert list(call.inputs) == [EMBEDDING] and call.inputs[EMBEDDING].shape == (2, DIM)
    assert isinstance(call.timeout, int) and call.timeout > 0 and call.kwargs == {}
    assert request.sender.sent == []


def test_an_escalated_request_is_answered_through_its_sender(lanes):
    g = gate({"sst2_logreg": probs(0.6), "sst2_encoder": probs(0.2)})
    responses = [None]
    request = Request({TEXT: texts("meh"), EMBEDDING: emb(1)})
    lanes.start(g.io.job(request, 0, responses))
    assert responses[0] is None  # the encoder's lane answers it
    assert request.sender.event.wait(10)
    ((response, flags),) = request.sender.sent
    assert flags == g.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL and not response.has_error()
    assert names(response) == ALL_OUTPUTS
    outputs = {t.name(): t.as_numpy().tolist() for t in response.outputs}
    assert outputs[LABEL] == [b"negative"] and outputs[TIER] == [ENCODER] and outputs[DEGRADED] == [False]
    assert [c.model_name for c in g.pb.sent] == ["sst2_logreg", "sst2_encoder"]
    assert g.pb.sent[1].inputs[TEXT].tolist() == [[b"meh"]]


def test_a_failed_send_is_logged_and_the_lane_goes_on(lanes):
    g = gate({"sst2_logreg": probs(0.6), "sst2_encoder": probs(0.2)})
    request = Request({TEXT: texts("meh"), EMBEDDING: emb(1)}, sender=Sender(fail=True))
    lanes.start(g.io.job(request, 0, [None]))
    assert request.sender.event.wait(10)
    lanes.close(timeout_s=2)
    assert ("warn", "sst2: sending a response failed: RuntimeError('client went away')") in g.pb.logs


def test_rows_without_an_answer_are_unavailable(lanes):
    g = gate({"sst2_logreg": lambda inputs, request: "stub process is not healthy"})
    responses = [None]
    request = Request({TEXT: texts("a"), EMBEDDING: emb(1)}, '{"max_tier": "logreg"}')
    lanes.start(g.io.job(request, 0, responses))
    error = responses[0].error()
    message = "1 row(s) unanswered: tier logreg failed: sst2_logreg: stub process is not healthy"
    assert (error.code(), error.message()) == (TritonError.UNAVAILABLE, message)
    assert ("warn", "sst2: tier 0 failed: sst2_logreg: stub process is not healthy") in g.pb.logs


@pytest.mark.parametrize(
    "error, code, logged",
    [
        (Cancelled("request cancelled by the client"), "CANCELLED", False),
        (TierFailure("sst2_encoder: gone"), "UNAVAILABLE", True),
        (CascadeError("the gate failed on this request: boom"), "INTERNAL", True),
    ],
)
def test_a_job_error_keeps_its_status(error, code, logged):
    g = gate({})
    job = g.io.job(Request({TEXT: texts("a")}), 0, [None])
    job.error = error
    response = g.io.response(job, set(ALL_OUTPUTS))
    assert (response.error().code(), response.error().message()) == (code, str(error))
    assert (("warn", f"sst2: {error}") in g.pb.logs) == logged


def test_a_response_that_cannot_be_built_is_an_internal_error():
    g = gate({})
    responses = [None]
    job = g.io.job(Request({TEXT: texts("a")}), 0, responses)
    job.run.finish = lambda: 1 / 0
    job.on_done(job)
    error = responses[0].error()
    assert (error.code(), error.message()) == ("INTERNAL", "the gate failed: division by zero")
    assert g.pb.logs == [("error", "sst2: building a response failed: ZeroDivisionError('division by zero')")]


# --- BLS calls ---------------------------------------------------------------------------------
def test_bls_calls_go_in_chunks_and_concatenate():
    g = gate({"m": lambda inputs, request: inputs["X"][:, :1] * 2})
    x = np.arange(5, dtype=np.float32).reshape(5, 1)
    out = g.calls.call("m", {"X": x}, "Y", lambda rows: 1.0, None, max_batch=2, parameters={"k": "v"})
    np.testing.assert_array_equal(out, x * 2)
    assert [len(c.inputs["X"]) for c in g.pb.sent] == [2, 2, 1]
    assert all(c.kwargs == {"parameters": {"k": "v"}} for c in g.pb.sent)


@pytest.mark.parametrize(
    "message, kind", [("Request timeout expired", TierBusy), ("stub process is not healthy", TierFailure)]
)
def test_a_failed_bls_call_is_a_tier_failure(message, kind):
    g = gate({"m": lambda inputs, request: message})
    with pytest.raises(kind, match=f"m: {message}") as caught:
        g.calls.call("m", {"X": np.zeros((1, 1), np.float32)}, "Y", lambda rows: 1.0, None)
    assert type(caught.value) is kind
    assert g.calls.guard.down() == ([] if kind is TierBusy else ["m"])  # busy is not dead: the breaker stays closed


def test_the_embedder_is_called_with_text():
    g = gate({contract.EMBEDDER_MODEL: lambda inputs, request: np.ones((len(inputs[TEXT]), DIM), np.float32)})
    assert g.calls.embed(["a", "b"]).shape == (2, DIM)
    (call,) = g.pb.sent
    assert call.outputs == [EMBEDDING] and call.inputs[TEXT].tolist() == [[b"a"], [b"b"]]


def test_tiers_by_kind_and_the_llm_prompt(tmp_path):
    g = gate({}, tiers=(LOGREG, ENCODER, LLM_SMALL), prompts={LLM_SMALL: PROMPT})
    tiers = [g.calls.tier(None, t) for t in (LOGREG, ENCODER, LLM_SMALL)]
    assert [type(t) for t in tiers] == [BlsTier, BlsTier, LlmTier]
    assert [(t.name, t.text_input) for t in tiers] == [
        ("sst2_logreg", False),
        ("sst2_encoder", True),
        ("llm_small", True),  # the LLM scorers are shared by the tasks
    ]
    assert tiers[2].parameters == {contract.PARAM_CALIBRATE: False}
    assert tiers[2].candidates.tolist() == [b"negative", b"positive"]
    with pytest.raises(
        ConfigError, match="sst2_logreg/1/model.onnx"
    ):  # an inline tier's load fails with the missing file's path
        gate({}, inline_tiers=(LOGREG,), repository=tmp_path)


# --- the Triton glue itself (python_backends/gate/model.py) over the fake pb_utils --------------
class MetricFamily:
    COUNTER, GAUGE = "counter", "gauge"

    def __init__(self, name, description, kind):
        self.name, self.kind, self.metrics = name, kind, []

    def Metric(self, labels):  # noqa: N802 - pb_utils' name
        metric = SimpleNamespace(labels=labels, value=0.0)
        metric.increment = lambda v: setattr(metric, "value", metric.value + v)
        metric.set = lambda v: setattr(metric, "value", v)
        self.metrics.append(metric)
        return metric


def test_the_model_glue_answers_requests(monkeypatch, tmp_path):
    pb = fake_pb({"sst2_logreg": probs(0.95)})
    pb.MetricFamily = MetricFamily
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location("gate_model_under_test", BACKENDS_DIR / "gate" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = GateConfig(task="sst2", labels=("negative", "positive"), tiers=(LOGREG, ENCODER), thresholds={LOGREG: 0.9})
    model_config = {
        "parameters": {k: {"string_value": v} for k, v in config.to_parameters().items()},
        "input": [{"name": TEXT, "dims": [1]}, {"name": EMBEDDING, "dims": [DIM]}],
    }
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(model_config), "model_repository": str(tmp_path / "sst2")})
    try:
        assert pb.logs == [("info", "sst2: gating on the host (numpy)")]
        good = Request({TEXT: texts("good"), EMBEDDING: emb(1)}, outputs=[LABEL, TIER])
        bad = Request({TEXT: texts("good")}, '{"colour": "red"}')
        broken = Request({TEXT: texts("good")}, "{not json")
        answered, invalid, internal = model.execute([good, bad, broken])
        assert names(answered) == [LABEL, TIER] and answered.outputs[0].as_numpy().tolist() == [b"positive"]
        assert invalid.error().code() == "INVALID_ARG" and "unknown request parameters" in invalid.error().message()
        assert internal.error().code() == "INTERNAL" and internal.error().message().startswith("bad request: ")
        assert pb.logs[-1][0] == "error" and pb.logs[-1][1].startswith("sst2: parsing a request failed: JSONDecode")
    finally:
        model.finalize()
    rows = [m for m in model.families["cascade_rows_total"].metrics if m.labels.get("tier") == "logreg"]
    assert [m.value for m in rows] == [1]
