"""The gate's logic (cascade.gate, cascade.escalate, cascade.tiercalls), tested directly with plain Python tiers."""

import json

import numpy as np
import pytest

from cascade import contract
from cascade.arrays import Placement, host
from cascade.errors import ALLOW_NUMPY2_ENV, ConfigError, InvalidInput, TierFailure, check_numpy
from cascade.escalate import Cancelled, RowBatch, run_cascade
from cascade.gate import GateConfig, RequestOptions, check_embeddings, decode_texts
from cascade.tiercalls import TierGuard

LABELS = ("negative", "positive")


def _placements() -> list[str | None]:
    """The gate's math runs on NumPy (CPU profile) and on torch tensors (GPU profile): both are tested, torch on
    the CPU here and on the GPU too where there is one."""
    import torch

    return [None, "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=_placements(), ids=lambda d: f"torch-{d}" if d else "numpy")
def at(request):
    return Placement(request.param)


class FixedTier:
    """A tier whose probabilities are given per row; records which rows it saw. It answers in the batch's
    placement, as the gate's tiers do (a BLS output taken by DLPack on a GPU)."""

    def __init__(self, tier, probs, fail=False):
        self.tier = tier
        self.probs = np.asarray(probs, np.float32)
        self.fail = fail
        self.seen = None

    def predict_proba(self, batch, rows):
        self.seen = host(rows).tolist()
        if self.fail:
            raise TierFailure("model unavailable")
        return batch.placement.asarray(self.probs[host(rows)])


def p(*positives):
    return [[1 - x, x] for x in positives]


def run(at, tiers, thresholds, n, min_tier=0, max_tier=4, on_tier_failure="best_effort"):
    batch = RowBatch([f"row {i}" for i in range(n)], placement=at)
    min_tier, max_tier = at.full((n,), min_tier), at.full((n,), max_tier)
    result = run_cascade(batch, tiers, thresholds, 2, min_tier, max_tier, on_tier_failure=on_tier_failure)
    assert Placement.of(result.probs).device == at.device and Placement.of(result.tier).device == at.device
    result.tier = host(result.tier)
    return result


def test_rows_escalate_only_when_below_threshold(at):
    t0 = FixedTier(0, p(0.99, 0.6, 0.05, 0.5))
    t1 = FixedTier(1, p(0.5, 0.95, 0.5, 0.7))
    t2 = FixedTier(2, p(0.5, 0.5, 0.5, 0.2))
    result = run(at, [t0, t1, t2], {0: 0.9, 1: 0.9}, 4)
    assert t0.seen == [0, 1, 2, 3]
    assert t1.seen == [1, 3]  # rows 0 and 2 were confident at tier 0
    assert t2.seen == [3]
    assert result.tier.tolist() == [0, 1, 0, 2]
    assert result.label_index.tolist() == [1, 1, 0, 0]
    np.testing.assert_allclose(result.confidence, [0.99, 0.95, 0.95, 0.8], rtol=1e-6)
    assert result.errors == [None] * 4
    assert [(s.tier, s.rows_in, s.answered) for s in result.stats] == [(0, 4, 2), (1, 2, 1), (2, 1, 1)]


def test_last_tier_answers_whatever_reaches_it(at):
    t0 = FixedTier(0, p(0.6, 0.55))
    t1 = FixedTier(1, p(0.51, 0.5))
    result = run(at, [t0, t1], {0: 0.99}, 2)
    assert result.tier.tolist() == [1, 1]


def test_max_tier_makes_a_cheaper_tier_final(at):
    t0 = FixedTier(0, p(0.6, 0.99))
    t1 = FixedTier(1, p(0.9, 0.9))
    result = run(at, [t0, t1], {0: 0.95}, 2, max_tier=0)
    assert t1.seen is None
    assert result.tier.tolist() == [0, 0]


def test_min_tier_skips_cheaper_tiers(at):
    t0 = FixedTier(0, p(0.99))
    t1 = FixedTier(1, p(0.7))
    result = run(at, [t0, t1], {0: 0.5}, 1, min_tier=1)
    assert t0.seen is None
    assert result.tier.tolist() == [1]


def test_failing_tier_escalates_its_rows(at):
    t0 = FixedTier(0, p(0.99, 0.99), fail=True)
    t1 = FixedTier(1, p(0.3, 0.8))
    result = run(at, [t0, t1], {0: 0.5}, 2)
    assert result.tier.tolist() == [1, 1]
    assert result.errors == [None, None]
    assert result.stats[0].failed


def test_failing_last_tier_reports_rows_as_errors_when_asked(at):
    t0 = FixedTier(0, p(0.99, 0.6))
    t1 = FixedTier(1, p(0.3, 0.8), fail=True)
    result = run(at, [t0, t1], {0: 0.9}, 2, on_tier_failure="error")
    assert result.tier.tolist() == [0, -1]
    assert result.errors[0] is None
    assert "tier xgboost failed: model unavailable" in result.errors[1]
    assert result.degraded.tolist() == [False, False]


def test_failing_last_tier_gives_the_most_confident_answer_flagged(at):
    """best_effort (the default): a row whose last tier failed gets the answer of the most confident tier that
    scored it, flagged; only a row no tier scored is an error."""
    t0 = FixedTier(0, p(0.99, 0.6, 0.3))
    t1 = FixedTier(1, p(0.5, 0.2, 0.45))  # row 1: 0.8 for negative, more confident than tier 0's 0.6
    t4 = FixedTier(4, p(0.5, 0.5, 0.5), fail=True)
    result = run(at, [t0, t1, t4], {0: 0.9, 1: 0.9}, 3)
    assert result.tier.tolist() == [0, 1, 0]  # row 2: tier 0 (0.7) beat tier 1 (0.55)
    assert result.degraded.tolist() == [False, True, True]
    assert result.errors == [None, None, None]
    assert result.label_index.tolist() == [1, 0, 0]
    np.testing.assert_allclose(result.confidence, [0.99, 0.8, 0.7], rtol=1e-6)
    # min_tier past every scoring tier: nothing scored the rows, so they stay errors.
    t4.seen = None
    result = run(at, [t0, t1, t4], {0: 0.9, 1: 0.9}, 2, min_tier=4)
    assert result.tier.tolist() == [-1, -1] and all("failed" in e for e in result.errors)
    assert result.degraded.tolist() == [False, False]


def test_tier_returning_bad_shape_is_a_failure(at):
    bad = FixedTier(0, [[0.5, 0.5, 0.0]])
    good = FixedTier(1, p(0.9))
    result = run(at, [bad, good], {0: 0.5}, 1)
    assert result.tier.tolist() == [1]
    assert "shape" in result.stats[0].error


def test_cancellation_is_checked_before_text_tiers_only(at):
    t0, t1, t2 = FixedTier(0, p(0.6)), FixedTier(1, p(0.6)), FixedTier(2, p(0.9))
    asked = []

    def cancelled():
        asked.append(True)
        return True

    with pytest.raises(Cancelled):
        run_cascade(
            RowBatch(["x"], placement=at),
            [t0, t1, t2],
            {0: 0.9, 1: 0.9},
            2,
            at.full((1,), 0),
            at.full((1,), 4),
            cancelled,
        )
    # The embedding tiers ran (sub-millisecond, no round trip to ask); the encoder did not.
    assert t0.seen == [0] and t1.seen == [0] and t2.seen is None
    assert len(asked) == 1


def test_row_batch_embeds_only_missing_rows_once(at):
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return np.ones((len(texts), contract.EMBEDDING_DIM), np.float32)

    given = np.full((3, contract.EMBEDDING_DIM), 2.0, np.float32)
    have = np.array([True, False, True])
    batch = RowBatch(["a", "b", "c"], embeddings=at.asarray(given), have_embedding=have, embed=embed, placement=at)
    out = batch.embedding(at.full((3,), 0) + at.asarray(np.arange(3), dtype="int64"))
    batch.embedding(at.full((1,), 1))
    assert calls == [["b"]]
    assert Placement.of(out).device == at.device and host(out)[:, 0].tolist() == [2.0, 1.0, 2.0]
    assert batch.embedded_rows == 1


# --- configuration ---------------------------------------------------------------------------------
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


# --- request options and inputs ----------------------------------------------------------------------
def test_request_options_parse_names_numbers_and_strings():
    opts = RequestOptions.parse({"max_tier": "logreg", "return_probs": "true"}, (0, 1, 2))
    assert (opts.min_tier, opts.max_tier, opts.return_probs) == (0, 0, True)
    assert RequestOptions.parse({"min_tier": 2}, (0, 1, 2)).min_tier == 2
    assert RequestOptions.parse({}, (0, 1)) == RequestOptions()


@pytest.mark.parametrize(
    "params, message",
    [
        ({"max_tier": 9}, "unknown tier"),
        ({"min_tier": 2, "max_tier": 1}, "above max_tier"),
        ({"min_tier": 3}, "no enabled tier"),
        ({"return_probs": "maybe"}, "boolean"),
        ({"on_tier_failure": "retry"}, "on_tier_failure must be one of"),
        ({"temperature": 0.1}, "unknown request parameters"),
    ],
)
def test_bad_request_options(params, message):
    with pytest.raises(InvalidInput) as info:
        RequestOptions.parse(params, (0, 1, 2))
    assert message in str(info.value)


def test_decode_texts_checks_and_truncates():
    assert decode_texts([b"good", "fine"]) == ["good", "fine"]
    assert len(decode_texts([b"x" * 1_000_000])[0]) == contract.MAX_TEXT_CHARS
    with pytest.raises(InvalidInput, match=r"TEXT\[1\] is empty"):
        decode_texts([b"ok", b"   "])
    with pytest.raises(InvalidInput, match=r"TEXT\[0\] is not valid UTF-8"):
        decode_texts([b"\xff\xfe bad"])


@pytest.mark.parametrize(
    "raw, error",
    [
        ([b"caf\xc3\xa9", b"ok\xc3"], r"TEXT\[1\] is not valid UTF-8"),  # a cut sequence before the separator
        ([b"ok", b"\xa9ok"], r"TEXT\[1\] is not valid UTF-8"),  # a stray continuation byte after it
        ([b"ok", b"", b"x"], r"TEXT\[1\] is empty"),
    ],
)
def test_decode_texts_joined_path_names_the_bad_row(raw, error):
    with pytest.raises(InvalidInput, match=error):
        decode_texts(raw)


def test_decode_texts_keeps_rows_apart():
    rows = [b"caf\xc3\xa9", b"a\x00b", b"plain", "a str row"]
    assert decode_texts(rows) == ["café", "a\x00b", "plain", "a str row"]
    assert decode_texts([b"one", b"two"]) == ["one", "two"]
    assert decode_texts(np.array([b"x" * 9000, b"y"], dtype=np.object_)) == ["x" * contract.MAX_TEXT_CHARS, "y"]


def test_check_embeddings(at):
    good = at.zeros((2, contract.EMBEDDING_DIM))
    assert check_embeddings(good, 2) is good  # float32 already: no copy, same device
    with pytest.raises(InvalidInput, match="rows but TEXT has"):
        check_embeddings(good, 3)
    with pytest.raises(InvalidInput, match="shape"):
        check_embeddings(at.zeros((2, 3)), 2)
    bad = np.zeros((3, contract.EMBEDDING_DIM), np.float32)
    bad[1, 5], bad[2, 0] = np.nan, np.inf
    with pytest.raises(InvalidInput, match="row 1 holds NaN"):
        check_embeddings(at.asarray(bad), 3)
    huge = np.full((1, contract.EMBEDDING_DIM), 3e38, np.float32)  # finite values whose row sum overflows
    assert host(check_embeddings(at.asarray(huge), 1))[0, 0] == np.float32(3e38)


def test_errors_map_to_triton_status_codes():
    from cascade.errors import triton_error

    class FakeTritonError:
        INTERNAL, INVALID_ARG, UNAVAILABLE, NOT_FOUND = "INTERNAL", "INVALID_ARG", "UNAVAILABLE", "NOT_FOUND"

        def __init__(self, message, code):
            self.message, self.code = message, code

    class FakePbUtils:
        TritonError = FakeTritonError

    err = triton_error(FakePbUtils, InvalidInput("TEXT[0] is empty"))
    assert (err.message, err.code) == ("TEXT[0] is empty", "INVALID_ARG")
    assert triton_error(FakePbUtils, TierFailure("down")).code == "UNAVAILABLE"
    err = triton_error(FakePbUtils, KeyError("x"), "scoring failed")
    assert (err.message, err.code) == ("scoring failed: 'x'", "INTERNAL")


# --- the tier guard: deadline and circuit breaker ----------------------------------------------------
def test_guard_returns_answers_and_passes_failures_on():
    guard = TierGuard(workers=3, retry_after_s=60)
    assert guard.call("a", lambda: 41 + 1, timeout_s=1) == 42

    def broken():
        raise TierFailure("a: stub not healthy")

    with pytest.raises(TierFailure, match="not healthy"):
        guard.call("a", broken, timeout_s=1)
    # The breaker is open: the next call is skipped at once, naming the failure; other targets still run.
    with pytest.raises(TierFailure, match=r"skipped for 60 s after a failure \(a: stub not healthy\)"):
        guard.call("a", lambda: 1, timeout_s=1)
    assert guard.call("b", lambda: 2, timeout_s=1) == 2
    assert guard.down() == ["a"]
    guard.close()


def test_guard_deadline_abandons_a_hung_call_and_tries_again_once_it_returns():
    import threading
    import time

    release = threading.Event()
    calls = []

    def hung():
        calls.append("hung")
        release.wait(10)
        return 0

    guard = TierGuard(workers=2, retry_after_s=0.05)
    start = time.monotonic()
    with pytest.raises(TierFailure, match="no answer within 100 ms"):
        guard.call("llm", hung, timeout_s=0.1)
    assert time.monotonic() - start < 2  # the deadline, not the hung call, bounds the wait
    time.sleep(0.1)  # past retry_after_s, but the abandoned call still runs: still skipped, fn not called
    with pytest.raises(TierFailure, match="still running past its deadline"):
        guard.call("llm", lambda: calls.append("second"), timeout_s=0.1)
    assert calls == ["hung"] and guard.down() == ["llm"]
    release.set()
    time.sleep(0.1)
    assert guard.call("llm", lambda: 7, timeout_s=0.1) == 7  # it answered at last: back in use
    assert guard.down() == []
    guard.close()


def test_request_chooses_what_a_tier_failure_gives():
    enabled = (0, 1, 2)
    assert RequestOptions.parse({}, enabled).on_tier_failure == "best_effort"
    assert RequestOptions.parse({}, enabled, on_tier_failure="error").on_tier_failure == "error"
    assert RequestOptions.parse({"on_tier_failure": "error"}, enabled).on_tier_failure == "error"


def test_a_busy_tier_does_not_open_the_breaker_but_a_failed_one_does():
    from cascade.errors import TierBusy
    from cascade.tiercalls import failure_of

    busy = failure_of("llm_large", "Request timeout expired")
    assert isinstance(busy, TierBusy) and "llm_large: Request timeout expired" in str(busy)
    dead = failure_of("llm_large", "Stub process 'llm_large_0_0' is not healthy.")
    assert type(dead) is TierFailure
    guard = TierGuard(workers=2, retry_after_s=60)

    def raise_(exc):
        raise exc

    for _ in range(3):  # busy again and again: each call still tries the tier
        with pytest.raises(TierBusy):
            guard.call("llm_large", lambda: raise_(busy), timeout_s=1)
    assert guard.down() == [] and guard.call("llm_large", lambda: 5, timeout_s=1) == 5
    with pytest.raises(TierFailure):
        guard.call("llm_large", lambda: raise_(dead), timeout_s=1)
    assert guard.down() == ["llm_large"]
    guard.close()
