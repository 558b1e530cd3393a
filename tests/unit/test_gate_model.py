"""The gate's Triton glue itself (python_backends/gate/model.py) and its metrics flush (cascade.gate.metrics_flush)
over
the fake ``pb_utils``."""

import importlib.util
import json
import sys
import threading

import pytest
from fake_pb import (
    ARMED,
    DIM,
    EMBEDDING,
    ENCODER,
    LABEL,
    LOGREG,
    TEXT,
    TIER,
    MetricFamily,
    Request,
    emb,
    fake_arm,
    fake_pb,
    instance,
    names,
    probs,
    texts,
)

from cascade.gate.config import GateConfig
from cascade.gate.metrics import IN_FLIGHT, ROWS, MetricsBuffer
from cascade.gate.metrics_flush import MetricsFlusher
from cascade.paths import BACKENDS_DIR


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
    model.initialize(
        {"model_config": json.dumps(model_config), "model_repository": str(tmp_path / "sst2"), **instance("sst2")}
    )
    try:
        assert ARMED[-1] == ("sst2", "sst2_0_0")  # a crash record for this instance (cascade.crash)
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
    rows = [m for m in model.flusher.families["cascade_rows_total"].metrics if m.labels.get("tier") == "logreg"]
    assert [m.value for m in rows] == [1]


def test_the_metrics_flusher_applies_counters_and_changed_gauges():
    pb = fake_pb({})
    pb.MetricFamily = MetricFamily
    metrics, lock, lanes = MetricsBuffer("sst2"), threading.Lock(), {"encoder": 2}
    flusher = MetricsFlusher(pb, metrics, lock, lambda: dict(lanes), (LOGREG, ENCODER))
    try:
        # Made: every tier's series exists at once (zero), and the lanes' gauges are set.
        rows = {m.labels["tier"]: m for m in flusher.families[ROWS].metrics}
        assert {tier: m.value for tier, m in rows.items()} == {"logreg": 0, "encoder": 0}
        assert flusher.families[ROWS].kind == MetricFamily.COUNTER
        (gauge,) = flusher.families[IN_FLIGHT].metrics
        assert (gauge.labels, gauge.value) == ({"task": "sst2", "tier": "encoder"}, 2)
        assert flusher.families[IN_FLIGHT].kind == MetricFamily.GAUGE
        with lock:
            metrics._add(ROWS, LOGREG, 3.0)
        lanes["encoder"] = 0
    finally:
        flusher.close()  # the last flush: pending increments go out whether due or not
    assert not flusher.thread.is_alive()
    assert rows["logreg"].value == 3 and gauge.value == 0
    assert len(flusher.families[ROWS].metrics) == 2  # one metric per series, reused


@pytest.fixture(autouse=True)
def no_faulthandler_file(monkeypatch):
    """The glue arms a crash record in initialize (tests/unit/test_crash.py tests that in child processes)."""
    monkeypatch.setattr("cascade.crash.arm", fake_arm)
    monkeypatch.setattr("cascade.crash.disarm", lambda path=None: None)
