"""The gate's requests and responses (cascade.gate.request_io) with a fake ``pb_utils``: request parsing, the outputs
per
wanted set, errors and their status codes, and the answer inline or through the response sender."""

import numpy as np
import pytest
from fake_pb import (
    ALL_OUTPUTS,
    CONFIDENCE,
    DEGRADED,
    DIM,
    EMBEDDING,
    ENCODER,
    LABEL,
    LOGREG,
    PROBS,
    TEXT,
    TIER,
    Request,
    Sender,
    TritonError,
    emb,
    gate,
    names,
    probs,
    texts,
)

from cascade.errors import CascadeError, InvalidInput, TierFailure
from cascade.gate.escalate import Cancelled
from cascade.gate.lanes import Lanes, lane_names


@pytest.fixture
def lanes():
    lanes = Lanes(30, lane_names((LOGREG, ENCODER)))
    yield lanes
    lanes.close(timeout_s=2)


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
