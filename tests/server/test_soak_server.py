"""The soak test (cascade/ops/soak.py): a short real run in CI (its judgement on made-up samples:
tests/unit/test_soak.py).

The 10-minute run is ``make soak``; here 25 s of the same mixed traffic against a real server check that the
traffic, the sampler and the judgement work, and that no request fails and no stub or shared-memory region
appears or disappears. Memory and region sizes are not judged over so short a run: the warm-up is still on.
"""

import pytest

from cascade.ops.soak import KINDS, run_soak


@pytest.mark.server
def test_a_short_soak_against_the_real_server(built_repo, sst2_task):
    repo, _ = built_repo
    report = run_soak(sst2_task, repo, duration_s=25, warmup_s=10, log=lambda _line: None)
    assert report["error_count"] == 0, report["errors"]
    assert set(report["requests"]) == set(KINDS)  # every kind of traffic ran
    assert report["rows"]["table"] >= 4096 and report["bad_requests_refused"] >= 5
    steady = [s for s in report["samples"] if s["t_s"] >= 10]
    assert len({s["stubs"] for s in steady}) == 1 and steady[0]["stubs"] >= 5
    assert len({s["shm_files"] for s in steady}) == 1  # region sizes may still step up this early
