"""Triton glue for the gate (the public ``<task>`` model): BLS calls to the tiers, logic in cascade.gate,
cascade.escalate and cascade.lanes.

``execute`` parses each request and runs its cheap steps inline; a request with rows left for a costly tier is
handed to that tier's lane and answered later through its response sender (Triton >= 24.06 allows that in the
default, non-decoupled mode), so ``execute`` returns at once and easy requests never queue behind an LLM call.

Where the gate's arrays live follows its instance kind: a CPU instance works on NumPy arrays; a GPU instance
(GPU profile, ``FORCE_CPU_ONLY_INPUT_TENSORS: no``) takes the request's EMBEDDING and every tier's PROBS as
torch tensors on its GPU by DLPack, asks the tiers for GPU outputs (``preferred_memory``), gates there, and
copies only the small outputs to the host. The gating code (cascade.escalate) is the same for both.
"""

import json
import threading
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from cascade import contract
from cascade.arrays import Placement, host
from cascade.errors import CascadeError, ConfigError, InvalidInput, TierFailure, check_numpy, triton_error
from cascade.escalate import Cancelled, CascadeRun, RowBatch
from cascade.gate import GateConfig, RequestOptions, check_embeddings, check_text_free, decode_texts, prompt_template
from cascade.lanes import Job, Lanes, lane_names
from cascade.metrics import FLUSH_INTERVAL_S, MetricsBuffer, families
from cascade.runtime import LinearModel, OnnxRunner
from cascade.tiercalls import TierGuard, failure_of

TEXT, EMBEDDING, PROBS = contract.TEXT.name, contract.EMBEDDING.name, contract.PROBS.name
PROMPT, CANDIDATES = contract.PROMPT.name, contract.CANDIDATES.name
MAX_BATCH = contract.DEFAULT_MAX_BATCH_SIZE


class BlsTier:
    """A tier served by another model of the same server, called with BLS."""

    def __init__(self, model, tier: int):
        self.model = model
        self.tier = tier
        self.name = contract.tier_model_name(model.config.task, tier)
        self.text_input = tier not in contract.EMBEDDING_TIERS

    def allowance_s(self, rows: int) -> float:
        return self.model.config.exec_allowance_s(self.tier, rows)

    def predict_proba(self, batch: RowBatch, rows: np.ndarray) -> np.ndarray:
        if self.text_input:
            inputs = {TEXT: _as_bytes(batch.text(rows))}
        else:
            inputs = {EMBEDDING: batch.embedding(rows)}
        return self.model.bls(self.name, inputs, PROBS, self.allowance_s, batch.queue_deadline)


class LlmTier(BlsTier):
    """An LLM scorer tier: the task's prompt around each row, the label verbalizations as candidates."""

    def __init__(self, model, tier: int, prompt: dict):
        super().__init__(model, tier)
        self.template = prompt_template(prompt)
        self.candidates = np.array([v.encode("utf-8") for v in self.template.verbalizations], dtype=np.object_)
        # The prompt's contextual-calibration choice; without one the scorer model's default applies.
        self.parameters = {contract.PARAM_CALIBRATE: prompt["calibrate"]} if "calibrate" in prompt else None

    def predict_proba(self, batch: RowBatch, rows: np.ndarray) -> np.ndarray:
        prompts = [self.template.format(text) for text in batch.text(rows)]
        prompt = np.array(
            [[p.prefix.encode("utf-8"), p.content.encode("utf-8"), p.suffix.encode("utf-8")] for p in prompts],
            dtype=np.object_,
        )
        candidates = np.tile(self.candidates, (len(prompts), 1))
        inputs = {PROMPT: prompt, CANDIDATES: candidates}
        return self.model.bls(
            self.name,
            inputs,
            PROBS,
            self.allowance_s,
            batch.queue_deadline,
            contract.LLM_MAX_BATCH_SIZE,
            self.parameters,
        )


class InlineTier:
    """An embedding tier run in this process from the tier model's own ONNX file: no BLS hop. On a GPU instance a
    linear tier (logreg) runs there as torch ops; other graphs run in ONNX Runtime on the host."""

    def __init__(self, repository: Path, task: str, tier: int, placement: Placement):
        self.tier = tier
        self.placement = placement
        model_dir = repository / contract.tier_model_name(task, tier) / contract.MODEL_VERSION
        self.linear = None
        if placement.device is not None:
            try:
                self.linear = LinearModel.load(model_dir)
            except ConfigError:
                pass
        # A missing file fails the load with its path.
        self.runner = OnnxRunner(model_dir, num_threads=1) if self.linear is None else None

    def predict_proba(self, batch: RowBatch, rows):
        try:
            if self.linear is not None:
                return self.linear.predict_proba(batch.embedding(rows), self.placement)
            return self.runner.run(host(batch.embedding(rows)))  # ONNX Runtime on the host
        except TierFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors become a tier failure (rows escalate)
            raise TierFailure(f"{contract.TIER_NAMES[self.tier]} (in-process): {exc}") from exc


def _as_bytes(texts: list[str]) -> np.ndarray:
    return np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(-1, 1)


class TritonPythonModel:
    def initialize(self, args):
        check_numpy()
        model_config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}
        # A bad parameter raises ConfigError here and fails the load with its message.
        self.config = GateConfig.from_parameters(params)
        # The width of EMBEDDING is the repository's embedder's, as the generated config declares it.
        self.embedding_dim = next(int(i["dims"][-1]) for i in model_config.get("input", []) if i["name"] == EMBEDDING)
        device = self.config.device(
            args.get("model_instance_kind", "CPU"), int(args.get("model_instance_device_id", 0))
        )
        self.placement = Placement(device)
        # Tier outputs come back where the gate gates: its GPU, or the host.
        gpu = device is not None and device.startswith("cuda")
        #: Tier calls in host memory: inputs leave the device before the call, outputs come back to it.
        self.host_io = gpu and self.config.tier_memory == contract.TIER_MEMORY_HOST
        memory = (
            (pb_utils.TRITONSERVER_MEMORY_GPU, int(device.split(":")[1]))
            if gpu and not self.host_io
            else (pb_utils.TRITONSERVER_MEMORY_CPU, 0)
        )
        self.preferred_memory = pb_utils.PreferredMemory(*memory)
        where = f", tier calls in {self.config.tier_memory} memory" if gpu else ""
        pb_utils.Logger.log_info(f"{self.config.task}: gating on {device or 'the host (numpy)'}{where}")
        self.labels = np.array([label.encode("utf-8") for label in self.config.labels], dtype=np.object_)
        # The BLS timeout bounds queue time only; the guard bounds each call as a whole (tiers + embedder)
        # and skips a failing tier for a while. Callers: execute and each lane, plus one abandoned call per target.
        self.guard = TierGuard(workers=2 * (len(self.config.tiers) + 1) + 4)
        repository = Path(args["model_repository"]).parent
        self.tiers = [self._tier(repository, tier) for tier in self.config.tiers]
        queue_timeout_s = self.config.queue_timeout_ms / 1000
        self.lanes = Lanes(queue_timeout_s, lane_names(self.config.tiers), pb_utils.Logger.log_error)
        self.metrics = MetricsBuffer(self.config.task)
        kinds = {False: pb_utils.MetricFamily.COUNTER, True: pb_utils.MetricFamily.GAUGE}
        self.families = {
            f.name: pb_utils.MetricFamily(name=f.name, description=f.description, kind=kinds[f.gauge])
            for f in families()
        }
        self.counters = {}
        # Buffered increments are flushed once a second by this thread (never per request).
        self.metrics_lock = threading.Lock()
        self.metrics.touch(self.config.tiers)
        self.metrics.force()
        self.flush_metrics()
        self.stopping = threading.Event()
        self.flusher = threading.Thread(target=self._flush_loop, name="metrics-flush", daemon=True)
        self.flusher.start()

    def _flush_loop(self) -> None:
        while not self.stopping.wait(FLUSH_INTERVAL_S):
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """Apply the buffered increments and the lanes' in-flight gauges (each metric call is a round trip: at
        most once a second)."""
        with self.metrics_lock:
            self.metrics.set_in_flight(self.lanes.in_flight())
            drained = self.metrics.drain() if self.metrics.due() else []
            gauges = self.metrics.gauges()
        for name, labels, value, gauge in [(*d, False) for d in drained] + [(*g, True) for g in gauges]:
            key = (name, tuple(sorted(labels.items())))
            metric = self.counters.get(key)
            if metric is None:
                metric = self.counters[key] = self.families[name].Metric(labels=labels)
            if gauge:
                metric.set(value)
            else:
                metric.increment(value)

    def finalize(self):
        self.lanes.close()
        self.stopping.set()
        self.flusher.join(timeout=5)
        self.metrics.force()
        self.flush_metrics()
        self.guard.close()

    def _tier(self, repository: Path, tier: int):
        if tier in self.config.inline_tiers:
            return InlineTier(repository, self.config.task, tier, self.placement)
        if tier in contract.LLM_TIERS:
            return LlmTier(self, tier, self.config.prompts[tier])
        return BlsTier(self, tier)

    def bls(
        self,
        model_name: str,
        inputs: dict,
        output_name: str,
        allowance_s,
        queue_deadline: float | None,
        max_batch: int = MAX_BATCH,
        parameters: dict | None = None,
    ):
        """Call another model in chunks of its max batch size; its output comes back in the gate's placement.

        Each chunk may run for ``allowance_s(rows)`` once Triton has taken it, and wait in the model's queue for
        as long (but not past ``queue_deadline``): Triton rejects it after that, and the tier is busy. Past both
        the gate stops waiting: the tier is hung. A failed or late chunk raises TierFailure (TierBusy when it was
        only busy)."""
        outputs = []
        rows = len(next(iter(inputs.values())))
        for start in range(0, rows, max_batch):
            chunk = {k: v[start : start + max_batch] for k, v in inputs.items()}
            n = len(next(iter(chunk.values())))
            # Triton's queue may hold the chunk about as long as the chunk may run (a call of another gate instance
            # or task ahead of it), and no longer than the lane's queue allowance left.
            exec_s = allowance_s(n)
            deadline = queue_deadline or time.monotonic() + self.config.queue_timeout_ms / 1000
            queue_s = max(0.05, min(exec_s, deadline - time.monotonic()))
            request = pb_utils.InferenceRequest(
                model_name=model_name,
                requested_output_names=[output_name],
                inputs=[self._tensor(k, v) for k, v in chunk.items()],
                timeout=int(queue_s * 1e6),  # Triton's queue only: past it the request is rejected
                preferred_memory=self.preferred_memory,
                **({"parameters": parameters} if parameters else {}),
            )
            outputs.append(
                self.guard.call(model_name, lambda r=request: self._exec(r, model_name, output_name), queue_s + exec_s)
            )
        return outputs[0] if len(outputs) == 1 else self.placement.xp.concat(outputs)

    def _exec(self, request, model_name: str, output_name: str):
        response = request.exec()
        if response.has_error():
            raise failure_of(model_name, response.error().message())
        return self._array(pb_utils.get_output_tensor_by_name(response, output_name))

    def _array(self, tensor):
        """A numeric Triton tensor in the gate's placement: NumPy on the host, or torch on the GPU by DLPack."""
        if self.placement.device is None:
            return tensor.as_numpy()
        if self.host_io:
            return self.placement.asarray(tensor.as_numpy())
        import torch

        return self.placement.asarray(torch.from_dlpack(tensor.to_dlpack()))

    def _tensor(self, name: str, array):
        if isinstance(array, np.ndarray):
            return pb_utils.Tensor(name, array)
        if self.host_io:
            return pb_utils.Tensor(name, host(array))
        return pb_utils.Tensor.from_dlpack(name, array.contiguous())  # a torch tensor on the GPU: no copy

    def _embed(self, texts: list[str]) -> np.ndarray:
        inputs = {TEXT: _as_bytes(texts)}
        return self.bls(contract.EMBEDDER_MODEL, inputs, EMBEDDING, self.config.embedder_allowance_s, None)

    def _parse(self, request):
        text_tensor = pb_utils.get_input_tensor_by_name(request, TEXT)
        emb_tensor = pb_utils.get_input_tensor_by_name(request, EMBEDDING)
        params = json.loads(request.parameters() or "{}")
        options = RequestOptions.parse(params, self.config.tiers, self.config.on_tier_failure)
        if text_tensor is None:
            if emb_tensor is None:
                raise InvalidInput(f"send {TEXT} (and optionally {EMBEDDING}) or {EMBEDDING} alone")
            check_text_free(options, self.config.tiers)
            texts = None
            array = self._array(emb_tensor)
            embeddings = check_embeddings(array, int(array.shape[0]), self.embedding_dim)
        else:
            texts = decode_texts(text_tensor.as_numpy().reshape(-1))
            embeddings = (
                check_embeddings(self._array(emb_tensor), len(texts), self.embedding_dim)
                if emb_tensor is not None
                else None
            )
        # Only the outputs asked for are built (Triton lists them all when the client names none): a table
        # job that reads PROBS skips serializing LABEL strings.
        wanted = set(request.requested_output_names())
        if options.return_probs:
            wanted.add(PROBS)
        n = len(texts) if texts is not None else len(embeddings)
        return n, texts, embeddings, options, wanted

    def execute(self, requests):
        """Parse each request and run its inline steps; a request with rows left for a costly tier goes to that
        tier's lane (its entry stays None here: the lane answers it through the response sender)."""
        responses = [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                job = self._job(request, i, responses)
            except Exception as exc:  # noqa: BLE001 - this request's error only, never the whole batch's
                if not isinstance(exc, CascadeError):
                    pb_utils.Logger.log_error(f"{self.config.task}: parsing a request failed: {exc!r}")
                responses[i] = pb_utils.InferenceResponse(error=triton_error(pb_utils, exc, "bad request"))
                continue
            self.lanes.start(job)
        return responses

    def _job(self, request, i: int, responses: list) -> Job:
        n, texts, embeddings, options, wanted = self._parse(request)
        at = self.placement
        batch = RowBatch(texts, embeddings=embeddings, embed=self._embed, placement=at)
        run = CascadeRun(
            batch,
            self.tiers,
            self.config.thresholds,
            len(self.config.labels),
            at.full((n,), options.min_tier),
            at.full((n,), options.max_tier),
            options.on_tier_failure,
        )
        sender = []

        def handover(job: Job) -> None:  # on the execute thread, before it returns
            sender.append(request.get_response_sender())
            job.cancelled = sender[0].is_cancelled
            batch.own()

        def done(job: Job) -> None:
            try:
                response = self._response(job, wanted)
            except Exception as exc:  # noqa: BLE001 - the request gets an error, never no answer
                pb_utils.Logger.log_error(f"{self.config.task}: building a response failed: {exc!r}")
                response = pb_utils.InferenceResponse(error=triton_error(pb_utils, exc, "the gate failed"))
            if not sender:
                responses[i] = response
                return
            try:
                sender[0].send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as exc:  # noqa: BLE001 - e.g. the client went away; the lane goes on
                pb_utils.Logger.log_warn(f"{self.config.task}: sending a response failed: {exc!r}")

        return Job(run, on_done=done, on_handover=handover, cancelled=request.is_cancelled)

    def _response(self, job: Job, wanted: set[str]):
        if job.error is not None:
            if not isinstance(job.error, Cancelled):
                pb_utils.Logger.log_warn(f"{self.config.task}: {job.error}")
            return pb_utils.InferenceResponse(error=triton_error(pb_utils, job.error))
        result = job.run.finish()
        for stat in result.stats:
            if stat.failed:
                pb_utils.Logger.log_warn(f"{self.config.task}: tier {stat.tier} failed: {stat.error}")
        with self.metrics_lock:
            self.metrics.add(result)
        failed = [e for e in result.errors if e]
        if failed:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(
                    f"{len(failed)} row(s) unanswered: {failed[0]}", pb_utils.TritonError.UNAVAILABLE
                )
            )
        # Only the small final outputs leave the device.
        return pb_utils.InferenceResponse(self._outputs(host(result.probs), host(result.tier), result.degraded, wanted))

    def _outputs(self, probs: np.ndarray, tiers: np.ndarray, degraded: np.ndarray, wanted: set[str]) -> list:
        outputs = []
        if contract.LABEL.name in wanted:
            outputs.append(pb_utils.Tensor(contract.LABEL.name, self.labels[probs.argmax(axis=1)]))
        if contract.CONFIDENCE.name in wanted:
            outputs.append(pb_utils.Tensor(contract.CONFIDENCE.name, probs.max(axis=1).astype(np.float32)))
        if contract.TIER.name in wanted:
            outputs.append(pb_utils.Tensor(contract.TIER.name, tiers.astype(np.int32)))
        if PROBS in wanted:
            outputs.append(pb_utils.Tensor(PROBS, probs))
        if contract.DEGRADED.name in wanted:
            outputs.append(pb_utils.Tensor(contract.DEGRADED.name, degraded.astype(np.bool_)))
        return outputs
