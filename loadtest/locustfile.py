"""Locust load test of a task's gate over gRPC (tritonclient). Run it with ``cascade loadtest SCENARIO``
(which prepares the rows and the environment) or ``make loadtest``; scenarios and budgets live in
``cascade/ops/loadtest.py``.

gRPC needs ``init_gevent()`` before tritonclient is imported: without it the users run one at a time.
"""

from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()

import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from locust import LoadTestShape, User, constant, constant_throughput, events, task  # noqa: E402

from cascade import contract  # noqa: E402
from cascade.ops import loadtest as lt  # noqa: E402

SCENARIO = lt.scenario(os.environ[lt.ENV_SCENARIO])
TASK = os.environ[lt.ENV_TASK]
BUDGET = SCENARIO.budget.scaled(float(os.environ.get(lt.ENV_BUDGET_SCALE, "1")))
STEPS = SCENARIO.load_steps(find_max=bool(os.environ.get(lt.ENV_SEARCH)))
_data = np.load(os.environ[lt.ENV_DATA], allow_pickle=True)
TEXTS = [t.encode("utf-8") for t in _data["text"]]
EMBEDDINGS = _data["embedding"].astype(np.float32)
#: (seconds since start, ms, ok) per request: per-step figures for the step scenario.
RECORDS: list[tuple[float, float, bool]] = []
STARTED = time.perf_counter()
PARAMETERS = {contract.PARAM_MAX_TIER: SCENARIO.max_tier} if SCENARIO.max_tier else None
OUTPUTS = [contract.LABEL.name, contract.TIER.name]


def _inputs(i: int) -> list:
    inputs = []
    if SCENARIO.send_text:
        text = grpcclient.InferInput(contract.TEXT.name, [1, 1], contract.TEXT.datatype)
        text.set_data_from_numpy(np.array([[TEXTS[i]]], dtype=np.object_))
        inputs.append(text)
    if SCENARIO.send_embedding:
        emb = grpcclient.InferInput(contract.EMBEDDING.name, [1, EMBEDDINGS.shape[1]], contract.EMBEDDING.datatype)
        emb.set_data_from_numpy(EMBEDDINGS[i : i + 1])
        inputs.append(emb)
    return inputs


class GateUser(User):
    """One client sending one row per request to the task's gate."""

    wait_time = constant_throughput(SCENARIO.rps_per_user) if SCENARIO.rps_per_user else constant(0)

    def on_start(self) -> None:
        ca = os.environ.get(contract.GRPC_CA_ENV)  # gRPC over TLS: the CA that signed the server's certificate
        self.client = grpcclient.InferenceServerClient(
            self.host.removeprefix("grpc://"), ssl=bool(ca), root_certificates=ca or None
        )
        self.outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUTS]
        self.rng = random.Random()

    def on_stop(self) -> None:
        self.client.close()

    @task
    def classify(self) -> None:
        i = self.rng.randrange(len(TEXTS))
        inputs = _inputs(i)
        start = time.perf_counter()
        error = None
        try:
            self.client.infer(TASK, inputs, outputs=self.outputs, parameters=PARAMETERS, client_timeout=30)
        except Exception as exc:  # noqa: BLE001 - every failure is counted against the budget
            error = exc
        ms = (time.perf_counter() - start) * 1000
        RECORDS.append((start - STARTED, ms, error is None))
        events.request.fire(
            request_type="grpc", name=SCENARIO.name, response_time=ms, response_length=0, exception=error, context={}
        )


if STEPS:

    class StepLoad(LoadTestShape):
        """Users in steps (``Scenario.steps``); each step's figures are reported on their own."""

        def tick(self):
            elapsed, start = self.get_run_time(), 0
            for users, seconds in STEPS:
                if elapsed < start + seconds:
                    return users, users
                start += seconds
            return None


def _window(rows: list[tuple[float, float, bool]], seconds: float) -> dict:
    ms = np.array([r[1] for r in rows]) if rows else np.zeros(0)
    failures = sum(1 for r in rows if not r[2])
    out = {
        "requests": len(rows),
        "rps": len(rows) / seconds if seconds > 0 else 0.0,
        "failure_ratio": failures / len(rows) if rows else 0.0,
    }
    for q in (50, 95, 99):
        out[f"p{q}_ms"] = float(np.percentile(ms, q)) if ms.size else 0.0
    return out


@events.quitting.add_listener
def judge(environment, **_kwargs) -> None:
    """Figures per run (and per step), every breached budget printed, a non-zero exit on a breach."""
    total = environment.stats.total
    seconds = max(total.last_request_timestamp - total.start_time, 1e-9) if total.num_requests else 0.0
    measured = {
        "requests": total.num_requests,
        "rps": total.num_requests / seconds if seconds else 0.0,
        "failure_ratio": total.fail_ratio,
        **lt.percentiles_ms(total),
    }
    result = {"scenario": SCENARIO.name, "task": TASK, "description": SCENARIO.description, "measured": measured}
    broken = lt.breaches(measured, BUDGET)
    if STEPS:
        steps, start = [], 0.0
        for users, length in STEPS:
            rows = [r for r in RECORDS if start <= r[0] < start + length]
            step = {"users": users} | _window(rows, length)
            step["within_budget"] = not lt.breaches(step, BUDGET)
            steps.append(step)
            start += length
        result["steps"] = steps
        within = [s["rps"] for s in steps if s["within_budget"]]
        result["highest_rps_within_budget"] = max(within) if within else 0.0
        # A step load climbs until the budget breaks: it fails only when no step kept the budget.
        broken = [] if within else ["no step stayed within the budget"]
    result["breaches"] = broken
    Path(os.environ[lt.ENV_RESULT]).write_text(json.dumps(result, indent=2))
    print(f"[loadtest] {SCENARIO.name}: {json.dumps(measured)}")
    for line in broken:
        print(f"[loadtest] BUDGET BREACHED ({SCENARIO.name}): {line}")
    environment.process_exit_code = 1 if broken else 0


@events.quit.add_listener
def exit_now(exit_code, **_kwargs) -> None:
    """Guard: with init_gevent, Locust can hang at exit in a gRPC channel's ``__del__``; results are written."""
    os._exit(exit_code)
