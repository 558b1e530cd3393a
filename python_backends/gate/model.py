"""Triton glue for the gate (the public ``<task>`` model): the logic lives in plain modules, unit-tested directly:
in ``cascade.gate``: tiers (the tiers and the BLS calls), request_io (requests and responses), metrics_flush (the
metrics flush), config, inputs, escalate and lanes. They import no Triton module: this file passes ``pb_utils`` in.

``execute`` parses each request and runs its cheap steps inline; a request with rows left for a costly tier is
handed to that tier's lane and answered later through its response sender (Triton >= 24.06 allows that in the
default, non-decoupled mode), so ``execute`` returns at once and easy requests never queue behind an LLM call.

Where the gate's arrays live follows its instance kind: a CPU instance works on NumPy arrays; a GPU instance
(GPU profile, ``FORCE_CPU_ONLY_INPUT_TENSORS: no``) takes the request's EMBEDDING and every tier's PROBS as
torch tensors on its GPU by DLPack, asks the tiers for GPU outputs (``preferred_memory``), gates there, and
copies only the small outputs to the host. The gating code (cascade.gate.escalate) is the same for both.
"""

import json
import threading
from pathlib import Path

import triton_python_backend_utils as pb_utils

from cascade import contract, crash
from cascade.errors import CascadeError, check_numpy, triton_error
from cascade.gate.arrays import Placement
from cascade.gate.config import GateConfig
from cascade.gate.lanes import Lanes, lane_names
from cascade.gate.metrics import MetricsBuffer
from cascade.gate.metrics_flush import MetricsFlusher
from cascade.gate.request_io import GateIO
from cascade.gate.tiers import BlsCalls


class TritonPythonModel:
    def initialize(self, args):
        crash.arm(args["model_name"], args["model_instance_name"])  # a record of a fatal signal
        check_numpy()
        model_config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}
        # A bad parameter raises ConfigError here and fails the load with its message.
        self.config = GateConfig.from_parameters(params)
        # The width of EMBEDDING is the repository's embedder's, as the generated config declares it.
        embedding_dim = next(
            int(i["dims"][-1]) for i in model_config.get("input", []) if i["name"] == contract.EMBEDDING.name
        )
        device = self.config.device(
            args.get("model_instance_kind", "CPU"), int(args.get("model_instance_device_id", 0))
        )
        self.placement = Placement(device)
        self.calls = BlsCalls(pb_utils, self.config, self.placement)
        where = f", tier calls in {self.config.tier_memory} memory" if self.calls.gpu else ""
        pb_utils.Logger.log_info(f"{self.config.task}: gating on {device or 'the host (numpy)'}{where}")
        repository = Path(args["model_repository"]).parent
        tiers = [self.calls.tier(repository, tier) for tier in self.config.tiers]
        queue_timeout_s = self.config.queue_timeout_ms / 1000
        self.lanes = Lanes(queue_timeout_s, lane_names(self.config.tiers), pb_utils.Logger.log_error)
        self.metrics = MetricsBuffer(self.config.task)
        self.metrics_lock = threading.Lock()
        self.io = GateIO(
            pb_utils,
            self.config,
            embedding_dim,
            self.placement,
            self.calls.array,
            self.calls.embed,
            tiers,
            self.metrics,
            self.metrics_lock,
        )
        # Buffered increments are flushed once a second by the flusher's thread (never per request).
        self.flusher = MetricsFlusher(
            pb_utils, self.metrics, self.metrics_lock, self.lanes.in_flight, self.config.tiers
        )

    def finalize(self):
        self.lanes.close()
        self.flusher.close()
        self.calls.close()
        crash.disarm()

    def execute(self, requests):
        """Parse each request and run its inline steps; a request with rows left for a costly tier goes to that
        tier's lane (its entry stays None here: the lane answers it through the response sender)."""
        responses = [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                job = self.io.job(request, i, responses)
            except Exception as exc:  # noqa: BLE001 - this request's error only, never the whole batch's
                if not isinstance(exc, CascadeError):
                    pb_utils.Logger.log_error(f"{self.config.task}: parsing a request failed: {exc!r}")
                responses[i] = pb_utils.InferenceResponse(error=triton_error(pb_utils, exc, "bad request"))
                continue
            self.lanes.start(job)
        return responses
