"""A fake ``triton_python_backend_utils`` for the gate's unit tests (test_gate_io, test_bls, test_gate_model), and a
gate instance built on it (:func:`gate`): BLS requests call plain Python models, responses and logs are recorded."""

import threading
from types import SimpleNamespace

import numpy as np

from cascade import contract
from cascade.gate.arrays import Placement
from cascade.gate.config import GateConfig
from cascade.gate.metrics import MetricsBuffer
from cascade.gate.request_io import GateIO
from cascade.gate.tiers import BlsCalls

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


def names(response):
    return [t.name() for t in response.outputs]


# --- what Triton passes to initialize -------------------------------------------------------------------------------
ARMED: list[tuple[str, str]] = []  # (model, instance) of each glue's crash.arm call under the fake


def instance(model: str) -> dict[str, str]:
    """The ``args`` keys naming the model and its instance, as Triton passes them to ``initialize``."""
    return {"model_name": model, "model_instance_name": f"{model}_0_0"}


def fake_arm(model: str, instance: str, directory=None):
    """``cascade.crash.arm`` without its process-wide side effect (faulthandler's file): the call is recorded."""
    ARMED.append((model, instance))
    return None
