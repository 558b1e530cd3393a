"""Triton glue for the gate (the public ``<task>`` model): BLS calls to the tiers, logic in cascade.gate.

Where the gate's arrays live follows its instance kind: a CPU instance works on NumPy arrays; a GPU instance
(GPU profile, ``FORCE_CPU_ONLY_INPUT_TENSORS: no``) takes the request's EMBEDDING and every tier's PROBS as
torch tensors on its GPU by DLPack, asks the tiers for GPU outputs (``preferred_memory``), gates there, and
copies only the small outputs to the host. The gating code (cascade.gate) is the same for both.
"""

import json
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from cascade import contract
from cascade.arrays import Placement, host
from cascade.errors import CascadeError, ConfigError, InvalidInput, TierFailure, triton_error
from cascade.gate import (
    Cancelled,
    GateConfig,
    RequestOptions,
    RowBatch,
    TierGuard,
    check_embeddings,
    check_text_free,
    decode_texts,
    prompt_template,
    run_cascade,
)
from cascade.metrics import FLUSH_INTERVAL_S, MetricsBuffer, families
from cascade.runtime import LinearModel, OnnxRunner

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
        self.timeout_s = model.config.timeout_s(tier)

    def predict_proba(self, batch: RowBatch, rows: np.ndarray) -> np.ndarray:
        if self.text_input:
            return self.model.bls(self.name, {TEXT: _as_bytes(batch.text(rows))}, PROBS, self.timeout_s)
        return self.model.bls(self.name, {EMBEDDING: batch.embedding(rows)}, PROBS, self.timeout_s)


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
        return self.model.bls(self.name, inputs, PROBS, self.timeout_s, contract.LLM_MAX_BATCH_SIZE, self.parameters)


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
        model_config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}
        # A bad parameter raises ConfigError here and fails the load with its message.
        self.config = GateConfig.from_parameters(params)
        device = self.config.device(
            args.get("model_instance_kind", "CPU"), int(args.get("model_instance_device_id", 0))
        )
        self.placement = Placement(device)
        # Tier outputs come back where the gate gates: its GPU, or the host.
        gpu = device is not None and device.startswith("cuda")
        memory = (
            (pb_utils.TRITONSERVER_MEMORY_GPU, int(device.split(":")[1]))
            if gpu
            else (pb_utils.TRITONSERVER_MEMORY_CPU, 0)
        )
        self.preferred_memory = pb_utils.PreferredMemory(*memory)
        pb_utils.Logger.log_info(f"{self.config.task}: gating on {device or 'the host (numpy)'}")
        self.labels = np.array([label.encode("utf-8") for label in self.config.labels], dtype=np.object_)
        # The BLS timeout bounds queue time only; the guard bounds each call as a whole (tiers + embedder)
        # and skips a failing tier for a while.
        self.guard = TierGuard(targets=len(self.config.tiers) + 1)
        repository = Path(args["model_repository"]).parent
        self.tiers = [self._tier(repository, tier) for tier in self.config.tiers]
        self.metrics = MetricsBuffer(self.config.task)
        self.families = {
            f.name: pb_utils.MetricFamily(name=f.name, description=f.description, kind=pb_utils.MetricFamily.COUNTER)
            for f in families()
        }
        self.counters = {}
        # Buffered increments are flushed once a second by this thread (never per request).
        self.metrics_lock = threading.Lock()
        self.metrics.touch(self.config.tiers)
        self.flush_metrics()
        self.stopping = threading.Event()
        self.flusher = threading.Thread(target=self._flush_loop, name="metrics-flush", daemon=True)
        self.flusher.start()

    def _flush_loop(self) -> None:
        while not self.stopping.wait(FLUSH_INTERVAL_S):
            if self.metrics.due():
                self.flush_metrics()

    def flush_metrics(self) -> None:
        """Apply the buffered increments (each metric call is a round trip: at most once a second)."""
        with self.metrics_lock:
            drained = self.metrics.drain()
        for name, labels, value in drained:
            key = (name, tuple(sorted(labels.items())))
            counter = self.counters.get(key)
            if counter is None:
                counter = self.counters[key] = self.families[name].Metric(labels=labels)
            counter.increment(value)

    def finalize(self):
        self.stopping.set()
        self.flusher.join(timeout=5)
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
        timeout_s: float,
        max_batch: int = MAX_BATCH,
        parameters: dict | None = None,
    ):
        """Call another model in chunks of its max batch size; its output comes back in the gate's placement. A
        failed chunk, or one with no answer within ``timeout_s``, raises TierFailure (the guard then skips the
        model for a while)."""
        outputs = []
        rows = len(next(iter(inputs.values())))
        for start in range(0, rows, max_batch):
            request = pb_utils.InferenceRequest(
                model_name=model_name,
                requested_output_names=[output_name],
                inputs=[self._tensor(k, v[start : start + max_batch]) for k, v in inputs.items()],
                timeout=int(timeout_s * 1e6),  # bounds the time in the tier's queue only
                preferred_memory=self.preferred_memory,
                **({"parameters": parameters} if parameters else {}),
            )
            outputs.append(
                self.guard.call(model_name, lambda r=request: self._exec(r, model_name, output_name), timeout_s)
            )
        return outputs[0] if len(outputs) == 1 else self.placement.xp.concat(outputs)

    def _exec(self, request, model_name: str, output_name: str):
        response = request.exec()
        if response.has_error():
            raise TierFailure(f"{model_name}: {response.error().message()}")
        return self._array(pb_utils.get_output_tensor_by_name(response, output_name))

    def _array(self, tensor):
        """A numeric Triton tensor in the gate's placement: NumPy on the host, or torch on the GPU by DLPack."""
        if self.placement.device is None:
            return tensor.as_numpy()
        import torch

        return self.placement.asarray(torch.from_dlpack(tensor.to_dlpack()))

    @staticmethod
    def _tensor(name: str, array):
        if isinstance(array, np.ndarray):
            return pb_utils.Tensor(name, array)
        return pb_utils.Tensor.from_dlpack(name, array.contiguous())  # a torch tensor on the GPU: no copy

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self.bls(contract.EMBEDDER_MODEL, {TEXT: _as_bytes(texts)}, EMBEDDING, self.config.bls_timeout_ms / 1000)

    def _parse(self, request):
        text_tensor = pb_utils.get_input_tensor_by_name(request, TEXT)
        emb_tensor = pb_utils.get_input_tensor_by_name(request, EMBEDDING)
        options = RequestOptions.parse(json.loads(request.parameters() or "{}"), self.config.tiers)
        if text_tensor is None:
            if emb_tensor is None:
                raise InvalidInput(f"send {TEXT} (and optionally {EMBEDDING}) or {EMBEDDING} alone")
            check_text_free(options, self.config.tiers)
            texts = None
            array = self._array(emb_tensor)
            embeddings = check_embeddings(array, int(array.shape[0]))
        else:
            texts = decode_texts(text_tensor.as_numpy().reshape(-1))
            embeddings = check_embeddings(self._array(emb_tensor), len(texts)) if emb_tensor is not None else None
        # Only the outputs asked for are built (Triton lists them all when the client names none): a table
        # job that reads PROBS skips serializing LABEL strings.
        wanted = set(request.requested_output_names())
        if options.return_probs:
            wanted.add(PROBS)
        n = len(texts) if texts is not None else len(embeddings)
        return n, texts, embeddings, options, wanted

    def execute(self, requests):
        responses = [None] * len(requests)
        parsed = []
        for i, request in enumerate(requests):
            try:
                parsed.append((i, *self._parse(request)))
            except CascadeError as exc:
                responses[i] = pb_utils.InferenceResponse(error=triton_error(pb_utils, exc))
        if not parsed:
            return responses

        at = self.placement
        if len(parsed) == 1:  # the common case: no copies
            _, n, texts, emb, options, _ = parsed[0]
            batch = RowBatch(texts, embeddings=emb, embed=self._embed, placement=at)
            min_tier, max_tier = at.full((n,), options.min_tier), at.full((n,), options.max_tier)
        else:
            texts, emb_parts, have_parts, min_parts, max_parts = [], [], [], [], []
            for _, n, t, emb, options, _ in parsed:
                # Rows sent without text never reach a text tier (check_text_free): a placeholder suffices.
                texts.extend(t if t is not None else [""] * n)
                emb_parts.append(emb if emb is not None else at.zeros((n, contract.EMBEDDING_DIM)))
                have_parts.append(np.full(n, emb is not None))
                min_parts.append(np.full(n, options.min_tier))
                max_parts.append(np.full(n, options.max_tier))
            batch = RowBatch(
                texts,
                embeddings=at.xp.concat(emb_parts),
                have_embedding=np.concatenate(have_parts),
                embed=self._embed,
                placement=at,
            )
            min_tier = at.asarray(np.concatenate(min_parts), dtype="int64")
            max_tier = at.asarray(np.concatenate(max_parts), dtype="int64")
        try:
            result = run_cascade(
                batch,
                self.tiers,
                self.config.thresholds,
                len(self.config.labels),
                min_tier,
                max_tier,
                cancelled=lambda: all(r.is_cancelled() for r in requests),
            )
        except Cancelled as exc:
            for i, *_ in parsed:
                responses[i] = pb_utils.InferenceResponse(error=triton_error(pb_utils, exc))
            return responses
        for stat in result.stats:
            if stat.failed:
                pb_utils.Logger.log_warn(f"{self.config.task}: tier {stat.tier} failed: {stat.error}")
        with self.metrics_lock:
            self.metrics.add(result)

        start = 0
        for i, n, _, _, _, wanted in parsed:
            rows = slice(start, start + n)
            start += n
            failed = [e for e in result.errors[rows] if e]
            if failed:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(
                        f"{len(failed)} row(s) unanswered: {failed[0]}", pb_utils.TritonError.UNAVAILABLE
                    )
                )
                continue
            # Only the small final outputs leave the device.
            responses[i] = pb_utils.InferenceResponse(
                self._outputs(host(result.probs[rows]), host(result.tier[rows]), wanted)
            )
        return responses

    def _outputs(self, probs: np.ndarray, tiers: np.ndarray, wanted: set[str]) -> list:
        outputs = []
        if contract.LABEL.name in wanted:
            outputs.append(pb_utils.Tensor(contract.LABEL.name, self.labels[probs.argmax(axis=1)]))
        if contract.CONFIDENCE.name in wanted:
            outputs.append(pb_utils.Tensor(contract.CONFIDENCE.name, probs.max(axis=1).astype(np.float32)))
        if contract.TIER.name in wanted:
            outputs.append(pb_utils.Tensor(contract.TIER.name, tiers.astype(np.int32)))
        if PROBS in wanted:
            outputs.append(pb_utils.Tensor(PROBS, probs))
        return outputs
