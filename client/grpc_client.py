"""Typed gRPC clients (sync and asyncio) for the cascade's gate models, over tritonclient.grpc."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from cascade import contract
from cascade.errors import (
    CascadeError,
    Forbidden,
    InvalidInput,
    RowsUnanswered,
    ServerError,
    ServerUnavailable,
    UnknownTask,
)

DEFAULT_URL = f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}"


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    tier: int
    probs: tuple[float, ...] | None = None
    #: A best-effort answer: the tier meant to answer failed, ``tier`` is the most confident one that scored it.
    degraded: bool = False

    @property
    def tier_name(self) -> str:
        return contract.TIER_NAMES.get(self.tier, str(self.tier))


def _inputs(module, texts: Sequence[str] | np.ndarray | None, embeddings: np.ndarray | None):
    """TEXT (and EMBEDDING when given); ``texts=None`` sends EMBEDDING alone (the gate then needs a
    ``max_tier`` that keeps the rows on the embedding tiers)."""
    inputs = []
    if texts is None:
        if embeddings is None or len(embeddings) == 0:
            raise InvalidInput("no texts or embeddings to classify")
    else:
        if len(texts) == 0:
            raise InvalidInput("no texts to classify")
        if isinstance(texts, np.ndarray) and texts.dtype == np.object_:
            raw = texts  # already bytes (the table job converts whole columns at once)
        else:
            raw = np.array([t.encode("utf-8") if isinstance(t, str) else t for t in texts], dtype=np.object_)
        raw = raw.reshape(-1, 1)  # TEXT is a per-row scalar: dims [1] after the batch dimension
        text = module.InferInput(contract.TEXT.name, list(raw.shape), contract.TEXT.datatype)
        text.set_data_from_numpy(raw)
        inputs.append(text)
    if embeddings is not None:
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        tensor = module.InferInput(contract.EMBEDDING.name, list(emb.shape), contract.EMBEDDING.datatype)
        tensor.set_data_from_numpy(emb)
        inputs.append(tensor)
    return inputs


def text_inputs(texts: Sequence[str]) -> list:
    """A TEXT input tensor of these texts, for a raw :meth:`CascadeClient.infer` call."""
    return _inputs(grpcclient, texts, None)


def _outputs(module, return_probs: bool):
    names = [contract.LABEL.name, contract.CONFIDENCE.name, contract.TIER.name, contract.DEGRADED.name]
    if return_probs:
        names.append(contract.PROBS.name)
    return [module.InferRequestedOutput(n) for n in names]


def _tls(kwargs: dict) -> dict:
    """``ssl`` and ``root_certificates`` from ``$CASCADE_GRPC_CA`` unless the caller chose."""
    ca = os.environ.get(contract.GRPC_CA_ENV)
    if ca and "ssl" not in kwargs:
        return {"ssl": True, "root_certificates": ca, **kwargs}
    return kwargs


def _parameters(max_tier, min_tier, return_probs: bool, on_tier_failure: str | None = None) -> dict | None:
    params = {}
    if max_tier is not None:
        params[contract.PARAM_MAX_TIER] = max_tier
    if min_tier is not None:
        params[contract.PARAM_MIN_TIER] = min_tier
    if return_probs:
        params[contract.PARAM_RETURN_PROBS] = True
    if on_tier_failure is not None:
        params[contract.PARAM_ON_TIER_FAILURE] = on_tier_failure
    return params or None


def _predictions(result, return_probs: bool) -> list[Prediction]:
    labels = result.as_numpy(contract.LABEL.name).reshape(-1)
    conf = result.as_numpy(contract.CONFIDENCE.name).reshape(-1)
    tiers = result.as_numpy(contract.TIER.name).reshape(-1)
    probs = result.as_numpy(contract.PROBS.name) if return_probs else None
    degraded = _degraded(result, len(labels))
    return [
        Prediction(
            label=labels[i].decode("utf-8"),
            confidence=float(conf[i]),
            tier=int(tiers[i]),
            probs=tuple(float(p) for p in probs[i]) if probs is not None else None,
            degraded=bool(degraded[i]),
        )
        for i in range(len(labels))
    ]


@dataclass(frozen=True)
class ModelStats:
    """A model's server-side counters: rows, executions and the time spent in its ``execute``."""

    rows: int = 0
    executions: int = 0
    compute_s: float = 0.0
    queue_s: float = 0.0

    @classmethod
    def from_json(cls, stats: dict) -> ModelStats:
        inference = stats.get("inference_stats", {})

        def seconds(key: str) -> float:
            return int(inference.get(key, {}).get("ns", 0)) / 1e9

        return cls(
            rows=int(stats.get("inference_count", 0)),
            executions=int(stats.get("execution_count", 0)),
            compute_s=seconds("compute_input") + seconds("compute_infer") + seconds("compute_output"),
            queue_s=seconds("queue"),
        )

    def __sub__(self, other: ModelStats) -> ModelStats:
        return ModelStats(
            self.rows - other.rows,
            self.executions - other.executions,
            self.compute_s - other.compute_s,
            self.queue_s - other.queue_s,
        )


def _degraded(result, n: int) -> np.ndarray:
    flags = result.as_numpy(contract.DEGRADED.name)
    return np.zeros(n, bool) if flags is None else flags.reshape(-1).astype(bool)


@dataclass(frozen=True)
class BatchResult:
    """A batch's answers as arrays (the table job's form): no per-row Python objects."""

    probs: np.ndarray  # [n, k] FP32 in the task's label order
    tier: np.ndarray  # [n] INT32, the tier that answered
    degraded: np.ndarray | None = None  # [n] bool, best-effort answers (None: all False)

    @property
    def label_index(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)


#: What the array form asks for: LABEL and CONFIDENCE follow from PROBS, so the gate skips building them.
_ARRAY_OUTPUTS = (contract.PROBS.name, contract.TIER.name, contract.DEGRADED.name)


def _batch_result(result) -> BatchResult:
    tier = result.as_numpy(contract.TIER.name).reshape(-1)
    return BatchResult(probs=result.as_numpy(contract.PROBS.name), tier=tier, degraded=_degraded(result, len(tier)))


def _model_parameters(config: dict) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def _gate_config(config: dict, task: str):
    from cascade.gate import GateConfig

    params = _model_parameters(config)
    if contract.CFG_LABELS not in params:
        raise UnknownTask(f"model {task!r} is not a task gate (no {contract.CFG_LABELS!r} parameter)")
    return GateConfig.from_parameters(params)


def translate(exc: InferenceServerException, task: str) -> CascadeError:
    """Map a Triton error to the project's error kinds."""
    message = exc.message() or str(exc)
    if "unknown model" in message or "is not found" in message:
        return UnknownTask(f"unknown task {task!r}: the server does not serve it ({message})")
    status = str(exc.status())
    if "protocol is restricted" in message:
        return Forbidden(f"{task}: {message} (set ${contract.ADMIN_KEY_ENV} to the server's admin key)")
    if "INVALID_ARG" in status:
        return InvalidInput(message)
    if status == "StatusCode.UNAVAILABLE" and "unanswered" in message:
        return RowsUnanswered(f"{task}: {message}")
    if status in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"):
        return ServerUnavailable(f"{task}: {message} (status {status})")
    return ServerError(f"{task}: {message} (status {exc.status()})")


@contextlib.contextmanager
def _translated(what: str, error=translate):
    """Inside the block, a Triton error is raised as ``error(exc, what)`` (one of the project's errors)."""
    try:
        yield
    except InferenceServerException as exc:
        raise error(exc, what) from exc


def _load_error(exc: InferenceServerException, name: str) -> ServerError:
    return ServerError(
        f"loading {name!r} failed: {exc.message()} (is the server in --model-control-mode=explicit, "
        "serving this repository?)"
    )


def _array_outputs(module) -> list:
    return [module.InferRequestedOutput(n) for n in _ARRAY_OUTPUTS]


def _embedder(config: dict) -> tuple[str, int]:
    dims = next(int(o["dims"][-1]) for o in config["output"] if o["name"] == contract.EMBEDDING.name)
    name = config.get("parameters", {}).get(contract.CFG_EMBEDDER, {}).get("string_value", "minilm-l6")
    return name, dims


def _score_inputs(module, prompts: Sequence, candidates: Sequence[str]) -> list:
    rows = [tuple(p) if not hasattr(p, "prefix") else (p.prefix, p.content, p.suffix) for p in prompts]
    if not rows:
        raise InvalidInput("no prompts to score")
    prompt = np.array([[part.encode("utf-8") for part in row] for row in rows], dtype=np.object_)
    cands = np.array([[c.encode("utf-8") for c in candidates]] * len(rows), dtype=np.object_)
    inputs = []
    for tensor, value in ((contract.PROMPT, prompt), (contract.CANDIDATES, cands)):
        item = module.InferInput(tensor.name, list(value.shape), tensor.datatype)
        item.set_data_from_numpy(value)
        inputs.append(item)
    return inputs


def _score_parameters(calibrate: bool | None) -> dict | None:
    return {contract.PARAM_CALIBRATE: calibrate} if calibrate is not None else None


def _scores(result) -> tuple[np.ndarray, np.ndarray]:
    return result.as_numpy(contract.PROBS.name), result.as_numpy(contract.TRUNCATED.name).reshape(-1)


def _ready_models(index: dict) -> list[str]:
    return [m["name"] for m in index.get("models", []) if m.get("state") == "READY"]


def _is_task(config: dict) -> bool:
    return contract.CFG_THRESHOLDS in config.get("parameters", {})


def _model_stats(raw: dict) -> dict[str, ModelStats]:
    return {m["name"]: ModelStats.from_json(m) for m in raw.get("model_stats", [])}


class _Connection:
    """What both clients share: the settings, the admin header and ``_module``'s Triton client."""

    _module = grpcclient

    def __init__(self, url: str = DEFAULT_URL, timeout_s: float = 120.0, admin_key: str | None = None, **kwargs):
        self.url = url
        self.timeout_s = timeout_s
        key = admin_key if admin_key is not None else os.environ.get(contract.ADMIN_KEY_ENV)
        self._admin_headers = {contract.GRPC_ADMIN_HEADER: key} if key else None
        self._client = self._module.InferenceServerClient(url, **_tls(kwargs))


class CascadeClient(_Connection):
    """Blocking client: ``CascadeClient(url).classify("sst2", ["great film"])``.

    ``admin_key`` (default: ``$CASCADE_ADMIN_KEY``) is sent with the admin calls (model load, repository
    index; model config and statistics too, which a Helm deployment may restrict) to a server that restricts
    them; inference needs no key. Request building and answer parsing are the module's helpers, which
    :class:`AsyncCascadeClient` shares: the two differ only in the transport call."""

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
        with _translated(task):
            result = self._client.infer(
                contract.gate_model_name(task),
                _inputs(grpcclient, texts, embeddings),
                outputs=_outputs(grpcclient, return_probs),
                parameters=_parameters(max_tier, min_tier, return_probs, on_tier_failure),
                client_timeout=self.timeout_s,
            )
        return _predictions(result, return_probs)

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
        with _translated(task):
            result = self._client.infer(
                contract.gate_model_name(task),
                _inputs(grpcclient, texts, embeddings),
                outputs=_array_outputs(grpcclient),
                parameters=_parameters(max_tier, min_tier, False, on_tier_failure),
                client_timeout=timeout_s or self.timeout_s,
            )
        return _batch_result(result)

    def labels(self, task: str) -> list[str]:
        """The task's labels, in the order of PROBS."""
        return list(self.gate_config(task).labels)

    def gate_config(self, task: str):
        """The task gate's configuration (labels, enabled tiers, thresholds), parsed as the gate parses it."""
        with _translated(task):
            name = contract.gate_model_name(task)
            config = self._client.get_model_config(name, headers=self._admin_headers, as_json=True)["config"]
        return _gate_config(config, task)

    def infer(self, model: str, inputs, outputs=None, parameters=None):
        """A raw call of any model (tier models, the embedder), for benchmarks and tests."""
        with _translated(model):
            return self._client.infer(
                model, inputs, outputs=outputs, parameters=parameters, client_timeout=self.timeout_s
            )

    def model_config(self, model: str) -> dict:
        """A served model's config as JSON (Triton's model_config)."""
        with _translated(model):
            return self._client.get_model_config(model, headers=self._admin_headers, as_json=True)["config"]

    def model_parameters(self, model: str) -> dict[str, str]:
        """A served model's config parameters (e.g. which GGUF an LLM scorer serves)."""
        return _model_parameters(self.model_config(model))

    def embedder(self) -> tuple[str, int]:
        """The served embedder's name and width, from its config (the repository's choice, cascade.embedders)."""
        return _embedder(self.model_config(contract.EMBEDDER_MODEL))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The server's embedding of each text ([n, dim] float32, the embedder model)."""
        return self.infer(contract.EMBEDDER_MODEL, text_inputs(texts)).as_numpy(contract.EMBEDDING.name)

    def score(
        self, model: str, prompts: Sequence, candidates: Sequence[str], calibrate: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Call an LLM scorer (``llm_small``, ``llm_large``): ``prompts`` are ``cascade.llm.Prompt`` rows
        (or (prefix, content, suffix) triples); returns ``(PROBS [n, k], TRUNCATED [n])``."""
        inputs = _score_inputs(grpcclient, prompts, candidates)
        return _scores(self.infer(model, inputs, parameters=_score_parameters(calibrate)))

    def load_models(self, names: Sequence[str]) -> None:
        """Load (or reload) models into a server started with ``--model-control-mode=explicit``, in order
        (tier models before the gate that calls them)."""
        for name in names:
            with _translated(name, _load_error):
                self._client.load_model(name, headers=self._admin_headers)

    def tasks(self) -> list[str]:
        """Ready gate models (the public tasks) in the repository."""
        with _translated("repository index"):
            index = self._client.get_model_repository_index(headers=self._admin_headers, as_json=True)
        return sorted(name for name in _ready_models(index) if _is_task(self.model_config(name)))

    def is_ready(self) -> bool:
        try:
            return self._client.is_server_ready()
        except InferenceServerException:
            return False

    def model_stats(self) -> dict[str, ModelStats]:
        """Per model, what the server counted since it started (``/v2/models/stats``)."""
        with _translated("statistics"):
            return _model_stats(self._client.get_inference_statistics(headers=self._admin_headers, as_json=True))

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
        with _translated(task):
            result = await self._client.infer(
                contract.gate_model_name(task),
                _inputs(aioclient, texts, embeddings),
                outputs=_outputs(aioclient, return_probs),
                parameters=_parameters(max_tier, min_tier, return_probs, on_tier_failure),
                client_timeout=self.timeout_s,
            )
        return _predictions(result, return_probs)

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
        with _translated(task):
            result = await self._client.infer(
                contract.gate_model_name(task),
                _inputs(aioclient, texts, embeddings),
                outputs=_array_outputs(aioclient),
                parameters=_parameters(max_tier, min_tier, False, on_tier_failure),
                client_timeout=timeout_s or self.timeout_s,
            )
        return _batch_result(result)

    async def labels(self, task: str) -> list[str]:
        return list((await self.gate_config(task)).labels)

    async def gate_config(self, task: str):
        with _translated(task):
            name = contract.gate_model_name(task)
            config = (await self._client.get_model_config(name, headers=self._admin_headers, as_json=True))["config"]
        return _gate_config(config, task)

    async def infer(self, model: str, inputs, outputs=None, parameters=None):
        with _translated(model):
            return await self._client.infer(
                model, inputs, outputs=outputs, parameters=parameters, client_timeout=self.timeout_s
            )

    async def model_config(self, model: str) -> dict:
        with _translated(model):
            return (await self._client.get_model_config(model, headers=self._admin_headers, as_json=True))["config"]

    async def model_parameters(self, model: str) -> dict[str, str]:
        return _model_parameters(await self.model_config(model))

    async def embedder(self) -> tuple[str, int]:
        return _embedder(await self.model_config(contract.EMBEDDER_MODEL))

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return (await self.infer(contract.EMBEDDER_MODEL, text_inputs(texts))).as_numpy(contract.EMBEDDING.name)

    async def score(
        self, model: str, prompts: Sequence, candidates: Sequence[str], calibrate: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        inputs = _score_inputs(aioclient, prompts, candidates)
        return _scores(await self.infer(model, inputs, parameters=_score_parameters(calibrate)))

    async def load_models(self, names: Sequence[str]) -> None:
        for name in names:
            with _translated(name, _load_error):
                await self._client.load_model(name, headers=self._admin_headers)

    async def tasks(self) -> list[str]:
        with _translated("repository index"):
            index = await self._client.get_model_repository_index(headers=self._admin_headers, as_json=True)
        return sorted([name for name in _ready_models(index) if _is_task(await self.model_config(name))])

    async def is_ready(self) -> bool:
        try:
            return await self._client.is_server_ready()
        except InferenceServerException:
            return False

    async def model_stats(self) -> dict[str, ModelStats]:
        with _translated("statistics"):
            raw = await self._client.get_inference_statistics(headers=self._admin_headers, as_json=True)
        return _model_stats(raw)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> AsyncCascadeClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
