"""Triton glue for the gate (the public ``<task>`` model): BLS calls to the tiers, logic in cascade.gate."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from cascade import contract
from cascade.errors import CascadeError, TierFailure, triton_error
from cascade.gate import (
    Cancelled,
    GateConfig,
    RequestOptions,
    RowBatch,
    check_embeddings,
    decode_texts,
    prompt_template,
    run_cascade,
)

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

    def predict_proba(self, batch: RowBatch, rows: np.ndarray) -> np.ndarray:
        if self.text_input:
            return self.model.bls(self.name, {TEXT: _as_bytes(batch.text(rows))}, PROBS)
        return self.model.bls(self.name, {EMBEDDING: batch.embedding(rows)}, PROBS)


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
        return self.model.bls(self.name, inputs, PROBS, contract.LLM_MAX_BATCH_SIZE, self.parameters)


def _as_bytes(texts: list[str]) -> np.ndarray:
    return np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(-1, 1)


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}
        # A bad parameter raises ConfigError here and fails the load with its message.
        self.config = GateConfig.from_parameters(params)
        self.labels = np.array([label.encode("utf-8") for label in self.config.labels], dtype=np.object_)
        self.timeout_us = self.config.bls_timeout_ms * 1000
        self.tiers = [
            LlmTier(self, tier, self.config.prompts[tier]) if tier in contract.LLM_TIERS else BlsTier(self, tier)
            for tier in self.config.tiers
        ]

    def bls(
        self,
        model_name: str,
        inputs: dict[str, np.ndarray],
        output_name: str,
        max_batch: int = MAX_BATCH,
        parameters: dict | None = None,
    ) -> np.ndarray:
        """Call another model in chunks of its max batch size; a failure raises TierFailure."""
        outputs = []
        rows = len(next(iter(inputs.values())))
        for start in range(0, rows, max_batch):
            request = pb_utils.InferenceRequest(
                model_name=model_name,
                requested_output_names=[output_name],
                inputs=[pb_utils.Tensor(k, v[start : start + max_batch]) for k, v in inputs.items()],
                timeout=self.timeout_us,
                **({"parameters": parameters} if parameters else {}),
            )
            response = request.exec()
            if response.has_error():
                raise TierFailure(f"{model_name}: {response.error().message()}")
            outputs.append(pb_utils.get_output_tensor_by_name(response, output_name).as_numpy())
        return np.concatenate(outputs) if len(outputs) > 1 else outputs[0]

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self.bls(contract.EMBEDDER_MODEL, {TEXT: _as_bytes(texts)}, EMBEDDING)

    def _parse(self, request):
        texts = decode_texts(pb_utils.get_input_tensor_by_name(request, TEXT).as_numpy().reshape(-1))
        emb_tensor = pb_utils.get_input_tensor_by_name(request, EMBEDDING)
        embeddings = check_embeddings(emb_tensor.as_numpy(), len(texts)) if emb_tensor is not None else None
        options = RequestOptions.parse(json.loads(request.parameters() or "{}"), self.config.tiers)
        want_probs = options.return_probs or PROBS in request.requested_output_names()
        return texts, embeddings, options, want_probs

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

        texts, emb_parts, have_parts, min_tier, max_tier = [], [], [], [], []
        for _, t, emb, options, _ in parsed:
            texts.extend(t)
            n = len(t)
            emb_parts.append(emb if emb is not None else np.zeros((n, contract.EMBEDDING_DIM), np.float32))
            have_parts.append(np.full(n, emb is not None))
            min_tier.append(np.full(n, options.min_tier))
            max_tier.append(np.full(n, options.max_tier))
        batch = RowBatch(
            texts,
            embeddings=np.concatenate(emb_parts),
            have_embedding=np.concatenate(have_parts),
            embed=self._embed,
        )
        try:
            result = run_cascade(
                batch,
                self.tiers,
                self.config.thresholds,
                len(self.config.labels),
                np.concatenate(min_tier),
                np.concatenate(max_tier),
                cancelled=lambda: all(r.is_cancelled() for r in requests),
            )
        except Cancelled as exc:
            for i, *_ in parsed:
                responses[i] = pb_utils.InferenceResponse(error=triton_error(pb_utils, exc))
            return responses
        for stat in result.stats:
            if stat.failed:
                pb_utils.Logger.log_warn(f"{self.config.task}: tier {stat.tier} failed: {stat.error}")

        start = 0
        for i, t, _, _, want_probs in parsed:
            rows = slice(start, start + len(t))
            start += len(t)
            failed = [e for e in result.errors[rows] if e]
            if failed:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(
                        f"{len(failed)} row(s) unanswered: {failed[0]}", pb_utils.TritonError.UNAVAILABLE
                    )
                )
                continue
            probs = result.probs[rows]
            outputs = [
                pb_utils.Tensor(contract.LABEL.name, self.labels[probs.argmax(axis=1)]),
                pb_utils.Tensor(contract.CONFIDENCE.name, probs.max(axis=1).astype(np.float32)),
                pb_utils.Tensor(contract.TIER.name, result.tier[rows].astype(np.int32)),
            ]
            if want_probs:
                outputs.append(pb_utils.Tensor(PROBS, probs))
            responses[i] = pb_utils.InferenceResponse(outputs)
        return responses
