"""LLM prompts and scorer requests: a row's :class:`Prompt`, a task's :class:`PromptTemplate` (instruction, few-shot
examples, verbalizations), and the parsing of a scorer request's ``PROMPT``/``CANDIDATES`` tensors and parameters,
shared by every scorer backend (llama.cpp on CPU, :mod:`cascade.llm.scorer`; TensorRT-LLM on GPU,
:mod:`cascade.llm.trtllm`).

No model and no Triton import here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cascade import contract
from cascade.errors import ConfigError, InvalidInput

TEXT_FIELD = "{text}"
#: Content-free inputs whose label distributions, averaged, are a prompt's prior for contextual calibration.
CONTENT_FREE = ("N/A", "")
#: The keys of a prompt's JSON form (:meth:`PromptTemplate.from_json`).
JSON_KEYS = ("instruction", "template", "verbalizations", "few_shot", "calibrate")


@dataclass(frozen=True)
class Prompt:
    """One row's prompt; the label is predicted right after ``suffix``. Only ``content`` is ever truncated."""

    prefix: str
    content: str
    suffix: str


def answer_text(suffix: str, candidate: str) -> tuple[str, str]:
    """Split ``suffix + candidate`` the way the scorer tokenizes it: ``(suffix without trailing spaces, answer)``.

    The answer carries the leading space ("Sentiment:" + " positive"), as a model saw it in training, unless
    the suffix ends in a newline or tab, where the answer starts the line.
    """
    stripped = suffix.rstrip(" ")
    if stripped and stripped[-1] in "\n\t\r":
        return stripped, candidate
    return stripped, " " + candidate


@dataclass(frozen=True)
class PromptTemplate:
    """A task's prompt: ``template`` holds exactly one ``{text}``; few-shot rows render before the input row."""

    template: str
    verbalizations: tuple[str, ...]
    few_shot: tuple[tuple[str, int], ...] = ()
    instruction: str = ""
    separator: str = "\n\n"  # between the instruction, each few-shot example and the input row
    #: Contextual calibration of this prompt's scores; None leaves the scorer model's default.
    calibrate: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "verbalizations", tuple(self.verbalizations))
        object.__setattr__(self, "few_shot", tuple((str(t), int(i)) for t, i in self.few_shot))
        if self.template.count(TEXT_FIELD) != 1:
            raise ConfigError(f"prompt template must contain {TEXT_FIELD} exactly once: {self.template!r}")
        validate_candidates(self.verbalizations, error=ConfigError)
        for text, label in self.few_shot:
            if not 0 <= label < len(self.verbalizations):
                raise ConfigError(f"few-shot label {label} out of range for {len(self.verbalizations)} labels")
            if not text.strip():
                raise ConfigError("few-shot example with empty text")

    @classmethod
    def from_json(cls, prompt: dict, n_labels: int | None = None) -> PromptTemplate:
        """A prompt in its JSON form, the one a gate's ``prompts`` parameter and a build carry: ``{"instruction",
        "template", "verbalizations", "few_shot": [[text, label index], ...], "calibrate"}`` (all but template and
        verbalizations optional), checked; with ``n_labels``, one verbalization per label. The one validator of a
        prompt: anything malformed is a :class:`ConfigError` naming it."""
        if not isinstance(prompt, dict):
            raise ConfigError(f"prompt must be a JSON object: {prompt!r}")
        unknown = set(prompt) - set(JSON_KEYS)
        if unknown:
            raise ConfigError(f"prompt has unknown keys {sorted(unknown)}")
        template, verbalizations = prompt.get("template"), prompt.get("verbalizations")
        if not isinstance(template, str):
            raise ConfigError(f"prompt template must contain {TEXT_FIELD} exactly once: {template!r}")
        if not isinstance(verbalizations, list):
            raise ConfigError(f"prompt verbalizations must be a list of non-empty strings: {verbalizations!r}")
        if n_labels is not None and len(verbalizations) != n_labels:
            raise ConfigError(f"{len(verbalizations)} prompt verbalizations for {n_labels} labels; they must match")
        examples = prompt.get("few_shot", [])
        for example in examples if isinstance(examples, list) else [examples]:
            if not (
                isinstance(example, list)
                and len(example) == 2
                and isinstance(example[0], str)
                and isinstance(example[1], int)
                and not isinstance(example[1], bool)
                and 0 <= example[1] < len(verbalizations)
            ):
                raise ConfigError(f"few-shot example must be [text, label index]: {example!r}")
        calibrate, instruction = prompt.get("calibrate"), prompt.get("instruction", "")
        if calibrate is not None and not isinstance(calibrate, bool):
            raise ConfigError(f"prompt 'calibrate' must be true or false: {calibrate!r}")
        if not isinstance(instruction, str):
            raise ConfigError(f"prompt instruction must be a string: {instruction!r}")
        few_shot = tuple((text, label) for text, label in examples)
        return cls(template, tuple(verbalizations), few_shot, instruction, calibrate=calibrate)

    def to_json(self) -> dict:
        """The JSON form :meth:`from_json` reads (``calibrate`` only when the prompt makes the choice)."""
        prompt = {
            "instruction": self.instruction,
            "template": self.template,
            "verbalizations": list(self.verbalizations),
            "few_shot": [[text, label] for text, label in self.few_shot],
        }
        return prompt | ({"calibrate": self.calibrate} if self.calibrate is not None else {})

    @property
    def parts(self) -> tuple[str, str]:
        """The template before and after ``{text}``."""
        before, after = self.template.split(TEXT_FIELD)
        return before, after

    def render_example(self, text: str, label: int) -> str:
        """One solved example: the template filled with ``text`` and followed by the label's verbalization."""
        before, after = self.parts
        suffix, answer = answer_text(after, self.verbalizations[label])
        return before + text + suffix + answer

    def format(self, text: str) -> Prompt:
        """The prompt of one row: instruction and few-shot examples go to the (shared, cached) prefix."""
        before, after = self.parts
        head = [self.instruction] if self.instruction else []
        head += [self.render_example(t, label) for t, label in self.few_shot]
        prefix = "".join(part + self.separator for part in head) + before
        return Prompt(prefix=prefix, content=text, suffix=after)


def contextual_calibration(probs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Contextual calibration (Zhao et al. 2021): each row's label probabilities divided by the prompt's content-free
    prior (the mean distribution over :data:`CONTENT_FREE` inputs), renormalised; float64."""
    p = np.asarray(probs, dtype=np.float64) / np.maximum(np.asarray(prior, dtype=np.float64), 1e-12)
    return p / p.sum(axis=-1, keepdims=True)


def validate_candidates(candidates: Sequence[str], error: type[Exception] = InvalidInput) -> tuple[str, ...]:
    """At least one candidate, none empty or blank, no duplicates."""
    if isinstance(candidates, str | bytes):
        raise error("candidates must be a sequence of strings, not a single string")
    cands = tuple(candidates)
    if not cands:
        raise error("empty candidate list: give at least one label verbalization")
    for c in cands:
        if not isinstance(c, str):
            raise error(f"candidate {c!r} is not a string")
        if not c.strip():
            raise error(f"empty candidate {c!r}: every label needs a non-blank verbalization")
    dupes = sorted({c for c in cands if cands.count(c) > 1})
    if dupes:
        raise error(f"duplicate candidates {dupes}: verbalizations must be distinct")
    return cands


def _decode(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except (UnicodeDecodeError, TypeError) as exc:
        raise InvalidInput(f"{what} is not valid UTF-8") from exc


def parse_scorer_inputs(prompt: np.ndarray, candidates: np.ndarray) -> tuple[list[Prompt], tuple[str, ...]]:
    """A scorer request's ``PROMPT`` [n, 3] (prefix, content, suffix) and ``CANDIDATES`` [n, k] (equal rows).

    Shared by every scorer backend (llama.cpp on CPU, TensorRT-LLM on GPU), so both reject the same input.
    """
    prompt = np.asarray(prompt, dtype=np.object_)
    cands = np.asarray(candidates, dtype=np.object_)
    if prompt.ndim != 2 or prompt.shape[1] != 3:
        raise InvalidInput(f"PROMPT must be [n, 3] (prefix, content, suffix), got {list(prompt.shape)}")
    if cands.ndim != 2 or cands.shape[0] != prompt.shape[0]:
        raise InvalidInput(f"CANDIDATES must be [n, k] with n = {prompt.shape[0]}, got {list(cands.shape)}")
    if (cands != cands[:1]).any():
        raise InvalidInput("all rows of one request must share the same CANDIDATES")
    prompts = [Prompt(*(_decode(part, f"PROMPT[{i}]") for part in row)) for i, row in enumerate(prompt)]
    names = validate_candidates([_decode(c, "CANDIDATES") for c in cands[0]]) if len(cands) else ()
    return prompts, names


def parse_scorer_parameters(raw: str | dict | None) -> bool | None:
    """A scorer request's parameters (JSON text, as ``request.parameters()`` gives them): the ``calibrate``
    override, or None for the model's default. Unknown keys and non-boolean values are :class:`InvalidInput`."""
    params = json.loads(raw) if isinstance(raw, str) and raw else (raw or {})
    unknown = set(params) - {contract.PARAM_CALIBRATE}
    if unknown:
        raise InvalidInput(f"unknown scorer parameters {sorted(unknown)}; expected {contract.PARAM_CALIBRATE!r}")
    value = params.get(contract.PARAM_CALIBRATE)
    if value is not None and not isinstance(value, bool):
        raise InvalidInput(f"scorer parameter {contract.PARAM_CALIBRATE!r} must be a boolean, got {value!r}")
    return value
