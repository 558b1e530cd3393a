"""The gate's BLS calls and tiers (cascade.gate.tiers) with a fake ``pb_utils``: chunks, failures, the embedder's call,
and the tier kinds with an LLM tier's prompt."""

import numpy as np
import pytest
from fake_pb import DIM, EMBEDDING, ENCODER, LLM_SMALL, LOGREG, PROMPT, TEXT, gate

from cascade import contract
from cascade.errors import ConfigError, TierBusy, TierFailure
from cascade.gate.tiers import BlsTier, LlmTier


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
