"""The gate's configuration (cascade.gate.config.GateConfig): its parameters' round trip, defaults, deadlines, prompts,
and the bad configurations that fail the load loudly."""

import json

import pytest

from cascade import contract
from cascade.errors import ALLOW_NUMPY2_ENV, ConfigError, check_numpy
from cascade.gate.config import GateConfig

LABELS = ("negative", "positive")


def good_params(**overrides):
    params = GateConfig("sst2", LABELS, (0, 1, 2), {0: 0.9, 1: 0.8}).to_parameters()
    params.update(overrides)
    return params


PROMPT = {"template": "Review: {text}\nSentiment:", "verbalizations": ["negative", "positive"]}


def llm_params(prompt: dict, tier: str = "llm_small") -> dict:
    """Gate parameter overrides enabling logreg -> llm_small with ``prompt`` for ``tier``."""
    return {
        "tiers": json.dumps(["logreg", "llm_small"]),
        "thresholds": json.dumps({"logreg": 0.9}),
        "prompts": json.dumps({tier: prompt}),
    }


def test_config_round_trips_through_parameters():
    config = GateConfig.from_parameters(good_params())
    assert config.tiers == (0, 1, 2)
    assert config.thresholds == {0: 0.9, 1: 0.8}
    assert config.needs_embedding


@pytest.mark.parametrize(
    "placement, kind, device",
    [("auto", "CPU", None), ("auto", "GPU", "cuda:1"), ("numpy", "GPU", None), ("torch:cpu", "CPU", "cpu"),
     ("torch:cuda:0", "CPU", "cuda:0")],
)  # fmt: skip
def test_placement_follows_the_instance_kind_unless_chosen(placement, kind, device):
    config = GateConfig.from_parameters(good_params(placement=placement))
    assert config.device(kind, 1) == device
    assert GateConfig.from_parameters(config.to_parameters()) == config


def test_tritons_own_parameters_are_left_to_triton():
    params = good_params(**{contract.FORCE_CPU_ONLY_INPUT_TENSORS: "no"})
    assert GateConfig.from_parameters(params) == GateConfig.from_parameters(good_params())


def test_tier_deadlines_grow_with_the_rows_and_round_trip():
    config = GateConfig.from_parameters(
        good_params(
            tier_timeouts_ms=json.dumps({"encoder": 250}),
            row_timeouts_ms=json.dumps({"encoder": 10}),
            queue_timeout_ms="5000",
            on_tier_failure="error",
        )
    )
    assert config.tier_timeouts_ms == {2: 250} and config.row_timeouts_ms == {2: 10}
    assert config.exec_allowance_s(2, 1) == pytest.approx(0.26)
    assert config.exec_allowance_s(2, 100) == pytest.approx(1.25)  # a big call is not a dead one
    per_row = contract.DEFAULT_ROW_TIMEOUT_MS[0]
    assert config.exec_allowance_s(0, 4) == pytest.approx((contract.DEFAULT_BLS_TIMEOUT_MS + 4 * per_row) / 1000)
    assert (config.queue_timeout_ms, config.on_tier_failure) == (5000, "error")
    assert GateConfig.from_parameters(config.to_parameters()) == config
    defaults = GateConfig("t", LABELS, (0,), {}).to_parameters()
    assert not {contract.CFG_TIER_TIMEOUTS_MS, contract.CFG_QUEUE_TIMEOUT_MS, contract.CFG_ON_TIER_FAILURE} & set(
        defaults
    )


def test_tier_memory_round_trips_and_defaults_to_the_device():
    assert GateConfig.from_parameters(good_params()).tier_memory == contract.TIER_MEMORY_DEVICE
    config = GateConfig.from_parameters(good_params(tier_memory="host"))
    assert config.tier_memory == contract.TIER_MEMORY_HOST
    assert config.to_parameters()[contract.CFG_TIER_MEMORY] == "host"
    assert GateConfig.from_parameters(config.to_parameters()) == config
    assert contract.CFG_TIER_MEMORY not in GateConfig("t", LABELS, (0,), {}).to_parameters()


def test_numpy_2_is_refused_with_the_fix_named():
    """Triton 2.51's stub miscomputes tensor sizes under NumPy 2 (bench/results/gpu-dry-run-numpy2-*.json)."""
    check_numpy("1.26.4", {})
    with pytest.raises(ConfigError, match=r"numpy 2\.5\.2 .* install numpy==1\.26\.4 .* CASCADE_ALLOW_NUMPY2=1"):
        check_numpy("2.5.2", {})
    check_numpy("2.5.2", {ALLOW_NUMPY2_ENV: "1"})
    check_numpy()  # this environment: the project's pin


def test_per_tier_prompts_round_trip():
    small = PROMPT | {"calibrate": True}
    large = PROMPT | {"few_shot": [["a fine film", 1]], "calibrate": False}
    params = good_params(
        tiers=json.dumps(["logreg", "llm_small", "llm_large"]),
        thresholds=json.dumps({"logreg": 0.9, "llm_small": 0.8}),
        prompts=json.dumps({"llm_small": small, "llm_large": large}),
    )
    config = GateConfig.from_parameters(params)
    assert config.prompts == {3: small, 4: large}
    assert GateConfig.from_parameters(config.to_parameters()) == config


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"thresholds": json.dumps({"logreg": 1.5, "xgboost": 0.8})}, "must be in [0, 1]"),
        ({"thresholds": json.dumps({"logreg": "high", "xgboost": 0.8})}, "must be a number"),
        ({"thresholds": json.dumps({"logreg": 0.9})}, "lacks tiers ['xgboost']"),
        ({"thresholds": json.dumps({"logreg": 0.9, "xgboost": 0.8, "llm_small": 0.5})}, "not enabled"),
        ({"tiers": json.dumps(["encoder", "logreg"])}, "cheapest first"),
        ({"tiers": json.dumps(["logreg", "gpt"])}, "unknown tier"),
        ({"labels": json.dumps(["only"])}, ">= 2 distinct"),
        ({"labels": "not json"}, "not JSON"),
        ({"bls_timeout_ms": "soon"}, "not an integer"),
        ({"bls_timeout_ms": "0"}, "positive integer"),
        ({"tier_timeouts_ms": json.dumps({"encoder": 0})}, "positive integer (ms)"),
        ({"placement": "cuda"}, "must be auto, numpy, torch:cpu or torch:cuda:N"),
        ({"placement": "torch:cuda:x"}, "must be auto, numpy, torch:cpu or torch:cuda:N"),
        ({"tier_timeouts_ms": json.dumps({"encoder": "1s"})}, "positive integer (ms)"),
        ({"tier_timeouts_ms": json.dumps({"llm_large": 100})}, "not enabled"),
        ({"tier_timeouts_ms": json.dumps(["encoder"])}, "must be a JSON dict"),
        ({"row_timeouts_ms": json.dumps({"llm_large": 100})}, "not enabled"),
        ({"row_timeouts_ms": json.dumps({"encoder": -1})}, "positive integer (ms)"),
        ({"queue_timeout_ms": "0"}, "'queue_timeout_ms' must be a positive integer"),
        ({"queue_timeout_ms": "later"}, "not an integer"),
        ({"on_tier_failure": "ignore"}, "must be one of ['best_effort', 'error']"),
        ({"tier_memory": "gpu"}, "'tier_memory' must be device or host"),
        ({"treshold": "0.5"}, "unknown gate parameters"),
        ({"tiers": json.dumps(["logreg", "llm_small"]), "thresholds": json.dumps({"logreg": 0.9})}, "no prompt"),
        (llm_params({"template": "Review: {text}\nSentiment:", "verbalizations": ["a", "b", "c"]}), "3 prompt verb"),
        (llm_params({"template": "no slot", "verbalizations": ["a", "b"]}), "exactly once"),
        (llm_params({"template": "{text}", "verbalizations": ["a", "a"]}), "distinct"),
        (llm_params({"template": "{text}", "verbalizations": ["a", "b"], "few_shot": [["x", 5]]}), "few-shot example"),
        (llm_params({"template": "{text}", "verbalizations": ["a", "b"], "calibrate": "yes"}), "true or false"),
        (llm_params({"template": "{text}", "verbalizations": ["a", "b"], "temperature": 1}), "unknown keys"),
        (llm_params(PROMPT, tier="llm_large"), "not an enabled LLM tier"),
        ({"prompts": json.dumps({"llm_small": "Review: {text}"})}, "must be a JSON object"),
    ],
)
def test_bad_config_fails_loudly(overrides, message):
    with pytest.raises(ConfigError, match=None) as info:
        GateConfig.from_parameters(good_params(**overrides))
    assert message in str(info.value)


def test_missing_parameter_fails():
    params = good_params()
    del params["labels"]
    with pytest.raises(ConfigError, match="missing gate parameters"):
        GateConfig.from_parameters(params)


def test_a_missing_bls_timeout_takes_the_documented_default():
    params = good_params()
    del params[contract.CFG_BLS_TIMEOUT_MS]
    config = GateConfig.from_parameters(params)
    assert config.bls_timeout_ms == contract.DEFAULT_BLS_TIMEOUT_MS == 30_000  # docs/slow-path.md: "(30 s)"
    assert config.exec_allowance_s(0, 0) == pytest.approx(30.0)
    assert GateConfig.from_parameters(good_params(bls_timeout_ms="250")).bls_timeout_ms == 250


@pytest.mark.parametrize("value", ["0", "-5", "soon", "", "1.5"])
def test_an_explicit_bad_bls_timeout_still_fails_the_load(value):
    with pytest.raises(ConfigError, match="gate parameter 'bls_timeout_ms'") as info:
        GateConfig.from_parameters(good_params(bls_timeout_ms=value))
    assert "not an integer" in str(info.value) or "must be a positive integer" in str(info.value)
