"""Typed gRPC clients (sync and asyncio) for the cascade's gate models, over tritonclient.grpc.

Both clients share request building (cascade_client.inputs), answer parsing (cascade_client.answers) and error
translation (cascade_client.translate): the two differ only in the transport call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from cascade_client import answers as answers
from cascade_client import contract
from cascade_client.answers import BatchResult, ModelStats, Prediction, TaskInfo
from cascade_client.inputs import (
    array_outputs,
    gate_inputs,
    gate_outputs,
    gate_parameters,
    score_inputs,
    score_parameters,
    text_inputs,
)
from cascade_client.translate import LOAD_PROBE_MODEL, load_error, load_probe, translate, translated

# Also importable from here: the answer types, text_inputs (cascade.ops.soak takes it from here) and translate.
__all__ = [
    "DEFAULT_URL",
    "AsyncCascadeClient",
    "BatchResult",
    "CascadeClient",
    "ModelStats",
    "Prediction",
    "TaskInfo",
    "text_inputs",
    "translate",
]

DEFAULT_URL = f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}"
#: The deadline of a metadata call (seconds); a client whose own deadline is shorter uses that.
METADATA_TIMEOUT_S = 30.0


def _tls(kwargs: dict) -> dict:
    """``ssl`` and ``root_certificates`` from ``$CASCADE_GRPC_CA`` unless the caller chose."""
    ca = os.environ.get(contract.GRPC_CA_ENV)
    if ca and "ssl" not in kwargs:
        return {"ssl": True, "root_certificates": ca, **kwargs}
    return kwargs


class _Connection:
    """What both clients share: the settings, the admin header and ``_module``'s Triton client."""

    _module = grpcclient

    def __init__(self, url: str = DEFAULT_URL, timeout_s: float = 120.0, admin_key: str | None = None, **kwargs):
        self.url = url
        self.timeout_s = timeout_s
        key = admin_key if admin_key is not None else os.environ.get(contract.ADMIN_KEY_ENV)
        self._admin_headers = {contract.GRPC_ADMIN_HEADER: key} if key else None
        # Metadata calls (configs, the repository index, statistics, readiness) answer at once on a live server:
        # a server that holds one longer is stuck, and the call fails as unavailable rather than wait for ever.
        self._meta = {"headers": self._admin_headers, "client_timeout": min(timeout_s, METADATA_TIMEOUT_S)}
        self._client = self._module.InferenceServerClient(url, **_tls(kwargs))


class CascadeClient(_Connection):
    """Blocking client: ``CascadeClient(url).classify("sst2", ["great film"])``.

    ``admin_key`` (default: ``$CASCADE_ADMIN_KEY``) is sent with the admin calls (model load, repository
    index; model config and statistics too, which a Helm deployment may restrict) to a server that restricts
    them; inference needs no key. Request building and answer parsing are helpers (cascade_client.inputs,
    cascade_client.answers) that :class:`AsyncCascadeClient` shares: the two differ only in the transport call."""

    def classify(
        self,
        task: str,
        texts: Sequence[str],
        embeddings: np.ndarray | None = None,
        *,
        max_tier: int | str | None = None,
        min_tier: int | str | None = None,
        return_probs: bool = False,
        on_tier_failure: str | None = None,
    ) -> list[Prediction]:
        with translated(task):
            result = self._client.infer(
                contract.gate_model_name(task),
                gate_inputs(grpcclient, texts, embeddings),
                outputs=gate_outputs(grpcclient, return_probs),
                parameters=gate_parameters(max_tier, min_tier, return_probs, on_tier_failure),
                client_timeout=self.timeout_s,
            )
        return answers.predictions(result, return_probs)

    def classify_arrays(
        self,
        task: str,
        texts: Sequence[str] | np.ndarray | None,
        embeddings: np.ndarray | None = None,
        *,
        max_tier: int | str | None = None,
        min_tier: int | str | None = None,
        on_tier_failure: str | None = None,
        timeout_s: float | None = None,
    ) -> BatchResult:
        """Like :meth:`classify`, answers as arrays; labels are ``self.labels(task)[result.label_index]``.
        ``timeout_s``: this call's deadline (default: the client's)."""
        with translated(task):
            result = self._client.infer(
                contract.gate_model_name(task),
                gate_inputs(grpcclient, texts, embeddings),
                outputs=array_outputs(grpcclient),
                parameters=gate_parameters(max_tier, min_tier, False, on_tier_failure),
                client_timeout=timeout_s or self.timeout_s,
            )
        return answers.batch_result(result)

    def labels(self, task: str) -> list[str]:
        """The task's labels, in the order of PROBS."""
        return list(self.task_info(task).labels)

    def task_info(self, task: str) -> TaskInfo:
        """The task's labels, enabled tiers and thresholds, and its gate's config parameters, as served."""
        with translated(task):
            name = contract.gate_model_name(task)
            config = self._client.get_model_config(name, as_json=True, **self._meta)["config"]
        return answers.task_info(config, task)

    def infer(self, model: str, inputs, outputs=None, parameters=None):
        """A raw call of any model (tier models, the embedder), for benchmarks and tests."""
        with translated(model):
            return self._client.infer(
                model, inputs, outputs=outputs, parameters=parameters, client_timeout=self.timeout_s
            )

    def model_config(self, model: str) -> dict:
        """A served model's config as JSON (Triton's model_config)."""
        with translated(model):
            return self._client.get_model_config(model, as_json=True, **self._meta)["config"]

    def model_parameters(self, model: str) -> dict[str, str]:
        """A served model's config parameters (e.g. which GGUF an LLM scorer serves)."""
        return answers.model_parameters(self.model_config(model))

    def embedder(self) -> tuple[str, int]:
        """The served embedder's name and width, from its config (the repository's choice, cascade.embedders)."""
        return answers.embedder(self.model_config(contract.EMBEDDER_MODEL))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The server's embedding of each text ([n, dim] float32, the embedder model)."""
        return self.infer(contract.EMBEDDER_MODEL, text_inputs(texts)).as_numpy(contract.EMBEDDING.name)

    def score(
        self, model: str, prompts: Sequence, candidates: Sequence[str], calibrate: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Call an LLM scorer (``llm_small``, ``llm_large``): ``prompts`` are ``cascade.llm.scorer.Prompt`` rows
        (or (prefix, content, suffix) triples); returns ``(PROBS [n, k], TRUNCATED [n])``."""
        inputs = score_inputs(grpcclient, prompts, candidates)
        return answers.scores(self.infer(model, inputs, parameters=score_parameters(calibrate)))

    def load_models(self, names: Sequence[str]) -> None:
        """Load (or reload) models into a server started with ``--model-control-mode=explicit``, in order
        (tier models before the gate that calls them)."""
        for name in names:
            with translated(name, load_error):
                self._client.load_model(name, headers=self._admin_headers)

    def check_loads(self) -> None:
        """Raise the reason, with its fix, unless the server takes model loads from this client (started with
        ``--model-control-mode=explicit``; the admin key where its protocols are restricted). Loads nothing."""
        try:
            self._client.load_model(
                LOAD_PROBE_MODEL, headers=self._admin_headers, client_timeout=self._meta["client_timeout"]
            )
        except InferenceServerException as exc:
            load_probe(exc, self.url)

    def tasks(self) -> list[str]:
        """Ready gate models (the public tasks) in the repository."""
        with translated("repository index"):
            index = self._client.get_model_repository_index(as_json=True, **self._meta)
        return sorted(name for name in answers.ready_models(index) if answers.is_task(self.model_config(name)))

    def is_ready(self) -> bool:
        try:
            return self._client.is_server_ready(client_timeout=self._meta["client_timeout"])
        except InferenceServerException:
            return False

    def model_stats(self) -> dict[str, ModelStats]:
        """Per model, what the server counted since it started (``/v2/models/stats``)."""
        with translated("statistics"):
            return answers.model_stats(self._client.get_inference_statistics(as_json=True, **self._meta))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> CascadeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncCascadeClient(_Connection):
    """asyncio client with the same API as :class:`CascadeClient` (each method awaited):
    ``await client.classify(task, texts)``; ``async with`` closes it."""

    _module = aioclient

    async def classify(
        self,
        task: str,
        texts: Sequence[str],
        embeddings: np.ndarray | None = None,
        *,
        max_tier: int | str | None = None,
        min_tier: int | str | None = None,
        return_probs: bool = False,
        on_tier_failure: str | None = None,
    ) -> list[Prediction]:
        with translated(task):
            result = await self._client.infer(
                contract.gate_model_name(task),
                gate_inputs(aioclient, texts, embeddings),
                outputs=gate_outputs(aioclient, return_probs),
                parameters=gate_parameters(max_tier, min_tier, return_probs, on_tier_failure),
                client_timeout=self.timeout_s,
            )
        return answers.predictions(result, return_probs)

    async def classify_arrays(
        self,
        task: str,
        texts: Sequence[str] | np.ndarray | None,
        embeddings: np.ndarray | None = None,
        *,
        max_tier: int | str | None = None,
        min_tier: int | str | None = None,
        on_tier_failure: str | None = None,
        timeout_s: float | None = None,
    ) -> BatchResult:
        with translated(task):
            result = await self._client.infer(
                contract.gate_model_name(task),
                gate_inputs(aioclient, texts, embeddings),
                outputs=array_outputs(aioclient),
                parameters=gate_parameters(max_tier, min_tier, False, on_tier_failure),
                client_timeout=timeout_s or self.timeout_s,
            )
        return answers.batch_result(result)

    async def labels(self, task: str) -> list[str]:
        return list((await self.task_info(task)).labels)

    async def task_info(self, task: str) -> TaskInfo:
        with translated(task):
            name = contract.gate_model_name(task)
            config = (await self._client.get_model_config(name, as_json=True, **self._meta))["config"]
        return answers.task_info(config, task)

    async def infer(self, model: str, inputs, outputs=None, parameters=None):
        with translated(model):
            return await self._client.infer(
                model, inputs, outputs=outputs, parameters=parameters, client_timeout=self.timeout_s
            )

    async def model_config(self, model: str) -> dict:
        with translated(model):
            return (await self._client.get_model_config(model, as_json=True, **self._meta))["config"]

    async def model_parameters(self, model: str) -> dict[str, str]:
        return answers.model_parameters(await self.model_config(model))

    async def embedder(self) -> tuple[str, int]:
        return answers.embedder(await self.model_config(contract.EMBEDDER_MODEL))

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return (await self.infer(contract.EMBEDDER_MODEL, text_inputs(texts))).as_numpy(contract.EMBEDDING.name)

    async def score(
        self, model: str, prompts: Sequence, candidates: Sequence[str], calibrate: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        inputs = score_inputs(aioclient, prompts, candidates)
        return answers.scores(await self.infer(model, inputs, parameters=score_parameters(calibrate)))

    async def load_models(self, names: Sequence[str]) -> None:
        for name in names:
            with translated(name, load_error):
                await self._client.load_model(name, headers=self._admin_headers)

    async def check_loads(self) -> None:
        try:
            await self._client.load_model(
                LOAD_PROBE_MODEL, headers=self._admin_headers, client_timeout=self._meta["client_timeout"]
            )
        except InferenceServerException as exc:
            load_probe(exc, self.url)

    async def tasks(self) -> list[str]:
        with translated("repository index"):
            index = await self._client.get_model_repository_index(as_json=True, **self._meta)
        return sorted([name for name in answers.ready_models(index) if answers.is_task(await self.model_config(name))])

    async def is_ready(self) -> bool:
        try:
            return await self._client.is_server_ready(client_timeout=self._meta["client_timeout"])
        except InferenceServerException:
            return False

    async def model_stats(self) -> dict[str, ModelStats]:
        with translated("statistics"):
            raw = await self._client.get_inference_statistics(as_json=True, **self._meta)
        return answers.model_stats(raw)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> AsyncCascadeClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
