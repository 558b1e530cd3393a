"""The soak test (cascade/ops/soak.py): its judgement on made-up samples (a short real run in CI:
tests/server/test_soak_server.py)."""

from dataclasses import replace

import pytest

from cascade.ops.soak import GROWTH_FLOOR_MB, Sample, judge, stubs

FLAT = [Sample(t, 200.0, 1500.0, 8, 8, 22.0, 70, 300) for t in (0.0, 30.0, 60.0, 90.0, 120.0)]


def test_flat_samples_pass():
    assert judge(FLAT, warmup_s=30, growth=0.1, errors=[]) == []


def test_growth_during_the_warmup_is_not_counted():
    samples = [replace(FLAT[0], server_rss_mb=50.0), *FLAT[1:]]
    assert judge(samples, warmup_s=30, growth=0.1, errors=[]) == []


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"stubs": 7}, "stub processes changed"),
        ({"shm_files": 9}, "/dev/shm regions changed"),
        ({"shm_mb": 29.0}, "/dev/shm still growing in the last third"),
        ({"server_rss_mb": 200.0 + GROWTH_FLOOR_MB + 1}, "server_rss_mb grew"),
        ({"stub_rss_mb": 1500.0 * 1.11}, "stub_rss_mb grew"),
    ],
)
def test_leaks_and_lost_processes_fail(change, problem):
    samples = [*FLAT[:-1], replace(FLAT[-1], **change)]
    problems = judge(samples, warmup_s=30, growth=0.1, errors=[])
    assert len(problems) == 1 and problem in problems[0]


def test_shared_memory_may_reach_a_high_water_mark_before_the_last_third():
    samples = [FLAT[0], FLAT[1], *(replace(s, shm_mb=29.0) for s in FLAT[2:])]  # a step at 60 s of 30-120 s
    assert judge(samples, warmup_s=30, growth=0.1, errors=[]) == []


def test_small_growth_is_noise_and_errors_fail():
    samples = [*FLAT[:-1], replace(FLAT[-1], server_rss_mb=200.0 + GROWTH_FLOOR_MB - 1)]
    assert judge(samples, warmup_s=30, growth=0.01, errors=[]) == []
    assert "2 unexpected errors, first: text: boom" in judge(FLAT, 30, 0.1, ["text: boom", "easy: bang"])[0]


def test_stubs_of_no_server_is_empty():
    assert stubs(0) == {}
