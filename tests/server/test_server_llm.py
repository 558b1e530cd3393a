"""The LLM tiers (llama.cpp scorers) behind the gate, on a real tritonserver over gRPC."""

import numpy as np
import pytest

from cascade import contract
from cascade.errors import InvalidInput

pytestmark = pytest.mark.server


def score(server, model, prompts, candidates, parameters=None):
    from cascade_client import CascadeClient

    calibrate = (parameters or {}).get(contract.PARAM_CALIBRATE)
    with CascadeClient(server.grpc_url) as c:
        if parameters and set(parameters) != {contract.PARAM_CALIBRATE}:  # a raw call: unknown parameters
            return c.infer(model, raw_inputs(prompts, candidates), parameters=parameters)
        return c.score(model, prompts, candidates, calibrate)


def raw_inputs(prompts, candidates):
    import tritonclient.grpc as grpcclient

    inputs = []
    prompt = np.array([[p.encode() for p in row] for row in prompts], dtype=np.object_)
    cands = np.array([[c.encode() for c in candidates]] * len(prompts), dtype=np.object_)
    for tensor, value in ((contract.PROMPT, prompt), (contract.CANDIDATES, cands)):
        item = grpcclient.InferInput(tensor.name, list(value.shape), tensor.datatype)
        item.set_data_from_numpy(value)
        inputs.append(item)
    return inputs


@pytest.mark.parametrize("tier", [contract.TIER_LLM_SMALL, contract.TIER_LLM_LARGE])
def test_llm_tiers_answer_through_the_gate(client, sst2_task, tier):
    texts = ["a gorgeous , moving and funny film .", "a tedious , clumsy mess ."]
    predictions = client.classify(sst2_task.name, texts, min_tier=tier, max_tier=tier, return_probs=True)
    assert [p.tier for p in predictions] == [tier, tier]
    for p in predictions:
        assert p.label in sst2_task.labels and abs(sum(p.probs) - 1) < 1e-4


@pytest.mark.parametrize("tier", [contract.TIER_LLM_SMALL, contract.TIER_LLM_LARGE])
def test_gate_formats_each_tiers_own_prompt(client, server, built_repo, sst2_task, tier):
    """The gate's answer at an LLM tier equals scoring that tier's prompt (template, few-shot examples,
    verbalizations, calibration choice) directly: each tier gets its own prompt from the task."""
    from cascade.gate.config import GateConfig
    from cascade.llm.prompts import PromptTemplate

    _, report = built_repo
    prompt = GateConfig.from_parameters(report["gate"]).prompts[tier]
    assert prompt == sst2_task.llm[tier].gate_prompt([tuple(x) for x in prompt["few_shot"]])
    template = PromptTemplate.from_json(prompt)
    texts = ["a gorgeous , moving and funny film .", "a tedious , clumsy mess ."]
    gate = client.classify(sst2_task.name, texts, min_tier=tier, max_tier=tier, return_probs=True)
    rows = [(p.prefix, p.content, p.suffix) for p in map(template.format, texts)]
    parameters = {contract.PARAM_CALIBRATE: prompt["calibrate"]} if "calibrate" in prompt else None
    direct, _ = score(server, contract.TIER_NAMES[tier], rows, template.verbalizations, parameters)
    # Compared as centred log-probabilities: llama.cpp is not batch-invariant, and a row whose prompt prefix was
    # cached from a different earlier row (in either of the tier's instances) is evaluated in other chunks: seen up
    # to 0.04 apart here and in CI, on answers 3.8-4.5 from the centre. (Calibration's effect on llm_large is of that
    # same small size; test_calibrate_parameter_switches_contextual_calibration checks it on llm_small.)
    gate_lp = centred_log([p.probs for p in gate])
    np.testing.assert_allclose(gate_lp, centred_log(direct), atol=ATOL_CENTRED)
    # The other LLM tier's prompt, scored by this tier's model, is further away than that: the check can tell.
    other_tier = contract.TIER_LLM_SMALL if tier == contract.TIER_LLM_LARGE else contract.TIER_LLM_LARGE
    other = PromptTemplate.from_json(GateConfig.from_parameters(report["gate"]).prompts[other_tier])
    rows = [(p.prefix, p.content, p.suffix) for p in map(other.format, texts)]
    wrong, _ = score(server, contract.TIER_NAMES[tier], rows, other.verbalizations, parameters)
    assert np.abs(gate_lp - centred_log(wrong)).max() > ATOL_CENTRED


ATOL_CENTRED = 0.15


def centred_log(probs):
    logp = np.log(np.asarray(probs, dtype=np.float64))
    return logp - logp.mean(axis=1, keepdims=True)


def test_calibrate_parameter_switches_contextual_calibration(server):
    model = contract.TIER_NAMES[contract.TIER_LLM_SMALL]
    prompts = [("Review: ", "an ok film", "\nSentiment:")]
    raw, _ = score(server, model, prompts, ["negative", "positive"], {contract.PARAM_CALIBRATE: False})
    cal, _ = score(server, model, prompts, ["negative", "positive"], {contract.PARAM_CALIBRATE: True})
    assert np.allclose(raw.sum(axis=1), 1, atol=1e-4) and np.allclose(cal.sum(axis=1), 1, atol=1e-4)
    assert np.abs(raw - cal).max() > 1e-3  # dividing out the content-free prior moves the probabilities


@pytest.mark.parametrize(
    "parameters, message", [({"calibrate": "maybe"}, "boolean"), ({"temperature": 1}, "unknown scorer parameters")]
)
def test_bad_scorer_parameters_are_invalid(server, parameters, message):
    with pytest.raises(InvalidInput, match=message):
        score(server, contract.TIER_NAMES[contract.TIER_LLM_SMALL], [("Q: ", "x", "\nA:")], ["yes", "no"], parameters)


def test_rows_escalate_into_the_llm_tiers(client, sst2_task):
    predictions = client.classify(sst2_task.name, ["it 's a movie ."] * 3, min_tier=contract.TIER_LLM_SMALL)
    assert {p.tier for p in predictions} <= set(contract.LLM_TIERS)


@pytest.mark.parametrize("model", [contract.TIER_NAMES[t] for t in sorted(contract.LLM_TIERS)])
def test_scorer_contract(server, model):
    prompts = [("Review: ", "a wonderful film", "\nSentiment:"), ("Review: ", "awful", "\nSentiment:")]
    probs, truncated = score(server, model, prompts, ["negative", "positive"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert not truncated.any()


def test_overlong_prompt_is_truncated_and_flagged(server):
    prompt = [("Review: ", "great fun . " * 3000, "\nSentiment:")]
    probs, truncated = score(server, contract.TIER_NAMES[contract.TIER_LLM_SMALL], prompt, ["negative", "positive"])
    assert truncated.tolist() == [True] and np.isfinite(probs).all()


@pytest.mark.parametrize("candidates, message", [(["yes", "yes"], "duplicate"), (["yes", ""], "empty")])
def test_bad_candidates_are_invalid(server, candidates, message):
    with pytest.raises(InvalidInput, match=message):
        score(server, contract.TIER_NAMES[contract.TIER_LLM_SMALL], [("Q: ", "x", "\nA:")], candidates)
