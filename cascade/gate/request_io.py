"""The gate's requests and responses: parse a request into a cascade job, answer it with the outputs asked for.

No Triton import: ``python_backends/gate/model.py`` passes its ``triton_python_backend_utils`` module in
(:class:`GateIO`), as it does to ``cascade.errors.triton_error``. A job is answered in the returned list of
``execute`` when it finished there, or through the request's response sender once a lane (``cascade.gate.lanes``)
took it: Triton >= 24.06 allows that in the default, non-decoupled mode.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from cascade import contract
from cascade.errors import InvalidInput, triton_error
from cascade.gate.arrays import Placement, host
from cascade.gate.config import GateConfig
from cascade.gate.escalate import Cancelled, CascadeRun, RowBatch
from cascade.gate.inputs import RequestOptions, check_embeddings, check_text_free, decode_texts
from cascade.gate.lanes import Job
from cascade.gate.metrics import MetricsBuffer

TEXT, EMBEDDING, PROBS = contract.TEXT.name, contract.EMBEDDING.name, contract.PROBS.name


class GateIO:
    """Requests in, responses out, for one gate instance.

    ``array`` turns a numeric Triton tensor into an array of the gate's placement
    (``cascade.gate.tiers.BlsCalls.array``);
    ``embed`` is the embedder's call; ``metrics`` (under ``metrics_lock``) counts each finished request."""

    def __init__(
        self,
        pb_utils: Any,
        config: GateConfig,
        embedding_dim: int,
        placement: Placement,
        array: Callable[[Any], Any],
        embed: Callable[[list[str]], Any] | None,
        tiers: list,
        metrics: MetricsBuffer,
        metrics_lock: threading.Lock,
    ) -> None:
        self.pb = pb_utils
        self.config = config
        self.embedding_dim = embedding_dim
        self.placement = placement
        self.array = array
        self.embed = embed
        self.tiers = tiers
        self.metrics = metrics
        self.metrics_lock = metrics_lock
        self.labels = np.array([label.encode("utf-8") for label in config.labels], dtype=np.object_)

    def parse(self, request):
        """``(rows, texts, embeddings, options, wanted outputs)`` of a request; InvalidInput when malformed."""
        pb = self.pb
        text_tensor = pb.get_input_tensor_by_name(request, TEXT)
        emb_tensor = pb.get_input_tensor_by_name(request, EMBEDDING)
        params = json.loads(request.parameters() or "{}")
        options = RequestOptions.parse(params, self.config.tiers, self.config.on_tier_failure)
        if text_tensor is None:
            if emb_tensor is None:
                raise InvalidInput(f"send {TEXT} (and optionally {EMBEDDING}) or {EMBEDDING} alone")
            check_text_free(options, self.config.tiers)
            texts = None
            array = self.array(emb_tensor)
            embeddings = check_embeddings(array, int(array.shape[0]), self.embedding_dim)
        else:
            texts = decode_texts(text_tensor.as_numpy().reshape(-1))
            embeddings = (
                check_embeddings(self.array(emb_tensor), len(texts), self.embedding_dim)
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

    def job(self, request, i: int, responses: list) -> Job:
        """The cascade job of ``request`` (the ``i``-th of ``execute``). Answered in ``responses[i]`` when it ends
        before ``execute`` returns, else through the request's response sender, taken when a lane takes it."""
        n, texts, embeddings, options, wanted = self.parse(request)
        at = self.placement
        batch = RowBatch(texts, embeddings=embeddings, embed=self.embed, placement=at)
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
        pb = self.pb

        def handover(job: Job) -> None:  # on the execute thread, before it returns
            sender.append(request.get_response_sender())
            job.cancelled = sender[0].is_cancelled
            batch.own()

        def done(job: Job) -> None:
            try:
                response = self.response(job, wanted)
            except Exception as exc:  # noqa: BLE001 - the request gets an error, never no answer
                pb.Logger.log_error(f"{self.config.task}: building a response failed: {exc!r}")
                response = pb.InferenceResponse(error=triton_error(pb, exc, "the gate failed"))
            if not sender:
                responses[i] = response
                return
            try:
                sender[0].send(response, flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as exc:  # noqa: BLE001 - e.g. the client went away; the lane goes on
                pb.Logger.log_warn(f"{self.config.task}: sending a response failed: {exc!r}")

        return Job(run, on_done=done, on_handover=handover, cancelled=request.is_cancelled)

    def response(self, job: Job, wanted: set[str]):
        """The response of a finished job (its outputs, or its error); counts its result in the metrics."""
        pb = self.pb
        if job.error is not None:
            if not isinstance(job.error, Cancelled):
                pb.Logger.log_warn(f"{self.config.task}: {job.error}")
            return pb.InferenceResponse(error=triton_error(pb, job.error))
        result = job.run.finish()
        for stat in result.stats:
            if stat.failed:
                pb.Logger.log_warn(f"{self.config.task}: tier {stat.tier} failed: {stat.error}")
        with self.metrics_lock:
            self.metrics.add(result)
        failed = [e for e in result.errors if e]
        if failed:
            return pb.InferenceResponse(
                error=pb.TritonError(f"{len(failed)} row(s) unanswered: {failed[0]}", pb.TritonError.UNAVAILABLE)
            )
        # Only the small final outputs leave the device.
        return pb.InferenceResponse(self.outputs(host(result.probs), host(result.tier), result.degraded, wanted))

    def outputs(self, probs: np.ndarray, tiers: np.ndarray, degraded: np.ndarray, wanted: set[str]) -> list:
        """The output tensors asked for, in this order: LABEL, CONFIDENCE, TIER, PROBS, DEGRADED."""
        tensor = self.pb.Tensor
        outputs = []
        if contract.LABEL.name in wanted:
            outputs.append(tensor(contract.LABEL.name, self.labels[probs.argmax(axis=1)]))
        if contract.CONFIDENCE.name in wanted:
            outputs.append(tensor(contract.CONFIDENCE.name, probs.max(axis=1).astype(np.float32)))
        if contract.TIER.name in wanted:
            outputs.append(tensor(contract.TIER.name, tiers.astype(np.int32)))
        if PROBS in wanted:
            outputs.append(tensor(PROBS, probs))
        if contract.DEGRADED.name in wanted:
            outputs.append(tensor(contract.DEGRADED.name, degraded.astype(np.bool_)))
        return outputs
