"""The client's answer types (:class:`Prediction`, :class:`BatchResult`, :class:`ModelStats`) and the parsing of
what the server answers into them: inference results, model configs, the repository index and statistics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from cascade_client import contract
from cascade_client.errors import ServerError, UnknownTask


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


def predictions(result, return_probs: bool) -> list[Prediction]:
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


def batch_result(result) -> BatchResult:
    tier = result.as_numpy(contract.TIER.name).reshape(-1)
    return BatchResult(probs=result.as_numpy(contract.PROBS.name), tier=tier, degraded=_degraded(result, len(tier)))


def model_parameters(config: dict) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


@dataclass(frozen=True)
class TaskInfo:
    """What a client reads of a task's gate: its labels (in the order of PROBS), enabled tiers (cheapest first) and
    their thresholds, and the gate's config parameters as served."""

    task: str
    labels: tuple[str, ...]
    tiers: tuple[int, ...]
    thresholds: dict[int, float]
    parameters: dict[str, str]


def task_info(config: dict, task: str) -> TaskInfo:
    params = model_parameters(config)
    if contract.CFG_LABELS not in params:
        raise UnknownTask(f"model {task!r} is not a task gate (no {contract.CFG_LABELS!r} parameter)")
    try:
        labels = json.loads(params[contract.CFG_LABELS])
        tiers = [contract.tier_from_name(name, ServerError) for name in json.loads(params[contract.CFG_TIERS])]
        thresholds = {
            contract.tier_from_name(name, ServerError): float(value)
            for name, value in json.loads(params[contract.CFG_THRESHOLDS]).items()
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ServerError(f"task {task!r}: the served gate's config is malformed ({exc!r})") from exc
    return TaskInfo(params.get(contract.CFG_TASK, task), tuple(labels), tuple(tiers), thresholds, params)


def embedder(config: dict) -> tuple[str, int]:
    dims = next(int(o["dims"][-1]) for o in config["output"] if o["name"] == contract.EMBEDDING.name)
    name = config.get("parameters", {}).get(contract.CFG_EMBEDDER, {}).get("string_value", "minilm-l6")
    return name, dims


def scores(result) -> tuple[np.ndarray, np.ndarray]:
    return result.as_numpy(contract.PROBS.name), result.as_numpy(contract.TRUNCATED.name).reshape(-1)


def ready_models(index: dict) -> list[str]:
    return [m["name"] for m in index.get("models", []) if m.get("state") == "READY"]


def is_task(config: dict) -> bool:
    return contract.CFG_THRESHOLDS in config.get("parameters", {})


def model_stats(raw: dict) -> dict[str, ModelStats]:
    return {m["name"]: ModelStats.from_json(m) for m in raw.get("model_stats", [])}
