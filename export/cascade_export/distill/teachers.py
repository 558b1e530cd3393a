"""The teachers that label a sample: the large LLM tier through a running server (:class:`ServerTeacher`, with
the prompt of :func:`teacher_prompt`), an OpenAI-compatible endpoint called directly (:class:`EndpointTeacher`),
or a column of labels the user already holds (:class:`ColumnTeacher`).
No Triton import here beyond the gRPC client."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cascade import contract
from cascade.errors import ConfigError, ServerError
from cascade_export.distill.table_rows import Table

TEACHER_LLM = contract.TIER_NAMES[contract.TIER_LLM_LARGE]
COLUMN_PREFIX = "column:"
ENDPOINT_PREFIX = "openai:"


class ColumnTeacher:
    """Labels the user already holds, in a column of the table: label indices or label names."""

    def __init__(self, table: Table, column: str, labels: Sequence[str]) -> None:
        if column not in table.frame.column_names:
            raise ConfigError(f"table {table.path}: no label column {column!r} (columns: {table.frame.column_names})")
        self.name = COLUMN_PREFIX + column
        self.labels = tuple(labels)
        self._values = table.frame.column(column).to_pylist()

    def label(self, positions: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.labels)}
        out, bad = [], []
        for pos in positions:
            value = self._values[int(pos)]
            if isinstance(value, str) and value in index:
                out.append(index[value])
            elif isinstance(value, str) and value.strip().isdigit() and int(value) < len(self.labels):
                out.append(int(value))
            elif isinstance(value, int | np.integer) and 0 <= int(value) < len(self.labels):
                out.append(int(value))
            else:
                bad.append(value)
                out.append(-1)
        if bad:
            raise ConfigError(
                f"{self.name}: {len(bad)} value(s) outside the task's labels {list(self.labels)} "
                f"(or indices 0-{len(self.labels) - 1}), e.g. {bad[:3]}"
            )
        return np.array(out, dtype=np.int64)


class ServerTeacher:
    """The large LLM tier through a running server: the task's prompt, argmax over its verbalizations."""

    def __init__(self, client, prompt: dict, model: str = TEACHER_LLM) -> None:
        from cascade.llm.prompts import PromptTemplate

        self.client = client
        self.model = model
        self.template = PromptTemplate.from_json(prompt)
        self.calibrate = self.template.calibrate
        digest = hashlib.sha1(repr(sorted(prompt.items())).encode()).hexdigest()[:12]
        # Another prompt, or another model behind the tier, is another teacher: its labels are cached apart.
        params = client.model_parameters(model)
        served = params.get(contract.CFG_LLM_ENDPOINT) or params.get(contract.CFG_LLM_MODEL, "unknown")
        self.name = f"{model}:{served}:{digest}"

    def label(self, positions: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """The teacher's probabilities ``[n, k]`` (its label is the argmax; the probabilities are its soft labels).
        Requests of at most the scorer's batch limit, one in flight per model instance (``contract.LLM_INSTANCES``):
        a labelling job uses every core the scorers were sized for."""
        from concurrent.futures import ThreadPoolExecutor

        prompts = [self.template.format(t) for t in texts]
        n_parts = max(contract.LLM_INSTANCES, -(-len(prompts) // contract.LLM_MAX_BATCH_SIZE))
        parts = [p for p in np.array_split(np.arange(len(prompts)), n_parts) if p.size]

        def score(idx: np.ndarray) -> np.ndarray:
            chunk = [prompts[i] for i in idx]
            return self.client.score(self.model, chunk, self.template.verbalizations, self.calibrate)[0]

        with ThreadPoolExecutor(min(len(parts), contract.LLM_INSTANCES)) as pool:
            return np.concatenate(list(pool.map(score, parts))).astype(np.float32)


class EndpointTeacher:
    """An OpenAI-compatible endpoint called directly (``openai:MODEL@URL``, no server in between): the task's
    prompt scored as the large tier would score it, rows sent concurrently up to the endpoint's limit."""

    def __init__(self, spec: str, prompt: dict, concurrency: int = 4, key_env: str = "OPENAI_API_KEY") -> None:
        from cascade.llm.openai_http import Endpoint
        from cascade.llm.prompts import PromptTemplate
        from cascade.llm.remote import RemoteScorer

        self.endpoint = Endpoint.parse(spec, concurrency=concurrency, key_env=key_env)
        self.template = PromptTemplate.from_json(prompt)
        self.scorer = RemoteScorer(self.endpoint)
        self.mode = self.scorer.probe()
        digest = hashlib.sha1(repr(sorted(prompt.items())).encode()).hexdigest()[:12]
        self.name = f"{self.endpoint.spec}:{digest}"

    @property
    def usage(self) -> dict[str, int]:
        return self.scorer.client.usage.snapshot()

    def label(self, positions: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        prompts = [self.template.format(t) for t in texts]
        return self.scorer.score(prompts, self.template.verbalizations, self.template.calibrate).probs

    def close(self) -> None:
        self.scorer.close()


def connect(url: str, timeout_s: float = 600.0):
    """A client of a ready server, or a :class:`ServerError` that names the URL."""
    from cascade_client import CascadeClient

    client = CascadeClient(url, timeout_s=timeout_s)
    if not client.is_ready():
        client.close()
        raise ServerError(f"no ready Triton server at {url}: start one with `cascade serve` or pass --url")
    return client


def teacher_prompt(task, data_dir: str | Path | None = None, seed: int = 0) -> dict:
    """The large tier's prompt for ``task``; its few-shot examples come from the task's dataset (labelled
    rows the user holds), so a task without a dataset must use a zero-shot teacher prompt."""
    from cascade.tasks import load_split
    from cascade_export.build.llm_tiers import draw_few_shot

    prompt = task.llm.get(contract.TIER_LLM_LARGE)
    if prompt is None:
        raise ConfigError(f"task {task.name}: the LLM teacher needs an [llm] prompt (template, verbalizations)")
    examples = []
    if prompt.few_shot:
        if task.dataset is None:
            raise ConfigError(
                f"task {task.name}: few_shot = {prompt.few_shot} needs labelled rows (a [dataset]); set few_shot = 0"
            )
        texts, labels = load_split(task, "train", data_dir)
        examples = draw_few_shot(texts, np.array(labels), prompt.few_shot, task.n_labels, np.random.default_rng(seed))
    return prompt.gate_prompt(examples)
