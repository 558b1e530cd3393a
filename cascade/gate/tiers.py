"""The gate's tiers and its BLS calls to the other models of the server (tiers, embedder).

No Triton import: ``python_backends/gate/model.py`` passes its ``triton_python_backend_utils`` module in
(:class:`BlsCalls`), as it does to ``cascade.errors.triton_error``.

Where the arrays live follows the gate instance's placement: on the host a BLS output is read as NumPy; on a GPU
(``FORCE_CPU_ONLY_INPUT_TENSORS: no``) the tiers are asked for GPU outputs (``preferred_memory``) taken as torch
tensors by DLPack, unless the gate's ``tier_memory`` is the host (inputs leave the device before the call, outputs
come back to it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from cascade import contract
from cascade.errors import ConfigError, TierFailure
from cascade.gate.arrays import Placement, host
from cascade.gate.calls import TierGuard, failure_of
from cascade.gate.config import GateConfig
from cascade.gate.escalate import RowBatch
from cascade.llm.prompts import PromptTemplate
from cascade.runtime.onnx_runner import LinearModel, OnnxRunner

TEXT, EMBEDDING, PROBS = contract.TEXT.name, contract.EMBEDDING.name, contract.PROBS.name
PROMPT, CANDIDATES = contract.PROMPT.name, contract.CANDIDATES.name
MAX_BATCH = contract.DEFAULT_MAX_BATCH_SIZE


def as_bytes(texts: list[str]) -> np.ndarray:
    return np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(-1, 1)


class BlsCalls:
    """BLS calls of one gate instance, guarded by a :class:`TierGuard` (its deadlines and circuit breaker); their
    outputs come back in the gate's placement."""

    def __init__(self, pb_utils: Any, config: GateConfig, placement: Placement) -> None:
        self.pb = pb_utils
        self.config = config
        self.placement = placement
        device = placement.device
        # Tier outputs come back where the gate gates: its GPU, or the host.
        self.gpu = device is not None and device.startswith("cuda")
        #: Tier calls in host memory: inputs leave the device before the call, outputs come back to it.
        self.host_io = self.gpu and config.tier_memory == contract.TIER_MEMORY_HOST
        memory = (
            (pb_utils.TRITONSERVER_MEMORY_GPU, int(device.split(":")[1]))
            if self.gpu and not self.host_io
            else (pb_utils.TRITONSERVER_MEMORY_CPU, 0)
        )
        self.preferred_memory = pb_utils.PreferredMemory(*memory)
        # The BLS timeout bounds queue time only; the guard bounds each call as a whole (tiers + embedder)
        # and skips a failing tier for a while. Callers: execute and each lane, plus one abandoned call per target.
        self.guard = TierGuard(workers=2 * (len(config.tiers) + 1) + 4)

    def close(self) -> None:
        self.guard.close()

    def call(
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
            request = self.pb.InferenceRequest(
                model_name=model_name,
                requested_output_names=[output_name],
                inputs=[self.tensor(k, v) for k, v in chunk.items()],
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
        return self.array(self.pb.get_output_tensor_by_name(response, output_name))

    def array(self, tensor):
        """A numeric Triton tensor in the gate's placement: NumPy on the host, or torch on the GPU by DLPack."""
        if self.placement.device is None:
            return tensor.as_numpy()
        if self.host_io:
            return self.placement.asarray(tensor.as_numpy())
        import torch

        return self.placement.asarray(torch.from_dlpack(tensor.to_dlpack()))

    def tensor(self, name: str, array):
        if isinstance(array, np.ndarray):
            return self.pb.Tensor(name, array)
        if self.host_io:
            return self.pb.Tensor(name, host(array))
        return self.pb.Tensor.from_dlpack(name, array.contiguous())  # a torch tensor on the GPU: no copy

    def embed(self, texts: list[str]) -> np.ndarray:
        inputs = {TEXT: as_bytes(texts)}
        return self.call(contract.EMBEDDER_MODEL, inputs, EMBEDDING, self.config.embedder_allowance_s, None)

    def tier(self, repository: Path, tier: int):
        """The gate's tier ``tier``: run in this process, or a BLS call to its model (an LLM scorer's with the
        task's prompt)."""
        if tier in self.config.inline_tiers:
            return InlineTier(repository, self.config.task, tier, self.placement)
        if tier in contract.LLM_TIERS:
            return LlmTier(self, tier, self.config.prompts[tier])
        return BlsTier(self, tier)


class BlsTier:
    """A tier served by another model of the same server, called with BLS."""

    def __init__(self, calls: BlsCalls, tier: int):
        self.calls = calls
        self.tier = tier
        self.name = contract.tier_model_name(calls.config.task, tier)
        self.text_input = tier not in contract.EMBEDDING_TIERS

    def allowance_s(self, rows: int) -> float:
        return self.calls.config.exec_allowance_s(self.tier, rows)

    def predict_proba(self, batch: RowBatch, rows: np.ndarray) -> np.ndarray:
        if self.text_input:
            inputs = {TEXT: as_bytes(batch.text(rows))}
        else:
            inputs = {EMBEDDING: batch.embedding(rows)}
        return self.calls.call(self.name, inputs, PROBS, self.allowance_s, batch.queue_deadline)


class LlmTier(BlsTier):
    """An LLM scorer tier: the task's prompt around each row, the label verbalizations as candidates."""

    def __init__(self, calls: BlsCalls, tier: int, prompt: dict):
        super().__init__(calls, tier)
        self.template = PromptTemplate.from_json(prompt)
        self.candidates = np.array([v.encode("utf-8") for v in self.template.verbalizations], dtype=np.object_)
        # The prompt's contextual-calibration choice; without one the scorer model's default applies.
        calibrate = self.template.calibrate
        self.parameters = {contract.PARAM_CALIBRATE: calibrate} if calibrate is not None else None

    def predict_proba(self, batch: RowBatch, rows: np.ndarray) -> np.ndarray:
        prompts = [self.template.format(text) for text in batch.text(rows)]
        prompt = np.array(
            [[p.prefix.encode("utf-8"), p.content.encode("utf-8"), p.suffix.encode("utf-8")] for p in prompts],
            dtype=np.object_,
        )
        candidates = np.tile(self.candidates, (len(prompts), 1))
        inputs = {PROMPT: prompt, CANDIDATES: candidates}
        return self.calls.call(
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
