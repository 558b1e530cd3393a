"""Thread counts of the served models, sized to the cores the server may use (no Triton import).

The rule (measured: ``python -m cascade.bench.threads``; docs/slow-path.md). ggml's threads spin-wait,
so a llama.cpp model with more threads than it has free cores collapses (Gemma 3 270M with one other core
busy: 302 ms/row at 2 threads, 105 ms/row at 1). ``llm_small`` and ``llm_large`` may score at the same time,
next to the gate and the embedder, so each LLM gets half the cores: ``max(1, cores // 2)``, at most
:data:`LLM_MAX_THREADS` (these small models gain little past it). The ONNX Runtime models never spin
(``cascade.runtime.onnx_runner.OnnxRunner``); the text models (the embedder, the encoder tier) get the same half,
the tiny models over embeddings (logreg, xgboost) one thread. On 2 cores every model runs one thread.

A model's ``num_threads`` parameter is an integer (used as it is) or ``auto`` (sized here). For the
llama.cpp models, ``$CASCADE_LLM_THREADS`` (``cascade serve --llm-threads``, the Helm value
``llm.threads``) wins over both: the operator who starts the server knows its machine better than the
repository that was built elsewhere (:func:`llm_model_threads`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from cascade import contract
from cascade.errors import ConfigError

#: Threads of one llama.cpp model are capped here: the CPU LLMs (135M-270M) barely speed up past it.
LLM_MAX_THREADS = 8
#: cgroup v2 CPU limit of the container ("max 100000" or "<quota> <period>").
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def server_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU limit (a Kubernetes
    ``limits.cpu``) when there is one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def positive_int(value: object, what: str) -> int:
    """``value`` as an integer >= 1; anything else is a :class:`ConfigError` naming ``what``."""
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{what} must be a positive integer or {contract.THREADS_AUTO!r}, got {value!r}")
    return int(text)


def llm_threads(cores: int | None = None, env: Mapping[str, str] | None = None) -> int:
    """Threads of one llama.cpp model: ``$CASCADE_LLM_THREADS`` when set, else half the cores."""
    env = os.environ if env is None else env
    override = env.get(contract.LLM_THREADS_ENV, "").strip()
    if override and override != contract.THREADS_AUTO:
        return positive_int(override, f"${contract.LLM_THREADS_ENV}")
    cores = server_cores() if cores is None else cores
    return min(LLM_MAX_THREADS, max(1, cores // 2))


def onnx_threads(text_model: bool, cores: int | None = None) -> int:
    """ONNX Runtime intra-op threads: half the cores for a text model, 1 for a model over embeddings."""
    if not text_model:
        return 1
    cores = server_cores() if cores is None else cores
    return max(1, cores // 2)


def resolve_threads(value: str | None, auto: Callable[[], int], what: str = contract.CFG_NUM_THREADS) -> int:
    """A ``num_threads`` parameter: an explicit integer wins; ``auto`` (or none) calls ``auto()``."""
    if value is None or str(value).strip() in ("", contract.THREADS_AUTO):
        return auto()
    return positive_int(value, what)


def llm_model_threads(value: str | None, env: Mapping[str, str] | None = None) -> int:
    """Threads of a served llama.cpp model whose ``num_threads`` parameter is ``value``: ``$CASCADE_LLM_THREADS``
    when set, else the parameter (``auto``: half the cores)."""
    env = os.environ if env is None else env
    if env.get(contract.LLM_THREADS_ENV, "").strip() not in ("", contract.THREADS_AUTO):
        return llm_threads(env=env)
    return resolve_threads(value, lambda: llm_threads(env=env))
