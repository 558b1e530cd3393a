"""Task definitions: one classification question, its labels, tiers and dataset, from a TOML file (``tasks/``); the
dataset files themselves are read by :mod:`cascade.datasets`."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cascade import contract
from cascade.datasets import DatasetSpec, read_rows
from cascade.errors import ConfigError
from cascade.llm.prompts import PromptTemplate
from cascade.paths import TASKS_DIR

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


@dataclass(frozen=True)
class LlmPrompt:
    """A task's prompt for an LLM tier as its TOML gives it: how many few-shot examples the build draws from the
    task's dataset (``few_shot``), or which (``examples``: ``[[text, label index], ...]``, e.g. the user's own rows that
    task create's teacher check chose); the prompt itself is a :class:`cascade.llm.prompts.PromptTemplate`."""

    template: str
    verbalizations: tuple[str, ...]
    few_shot: int = 0
    instruction: str = ""
    #: Contextual calibration for this prompt; None leaves the scorer model's default.
    calibrate: bool | None = None
    examples: tuple[tuple[str, int], ...] = ()

    def gate_prompt(self, examples: list[tuple[str, int]] = ()) -> dict:
        """This tier's entry in the gate's ``prompts`` parameter (a :class:`PromptTemplate`'s JSON form), with the
        few-shot examples the build drew, else the prompt's own."""
        shots = tuple(examples) or self.examples
        template = PromptTemplate(self.template, self.verbalizations, shots, self.instruction)
        return replace(template, calibrate=self.calibrate).to_json()


_PROMPT_KEYS = ("template", "verbalizations", "few_shot", "instruction", "calibrate", "examples")


def _examples(raw, where: str) -> tuple[tuple[str, int], ...]:
    if not isinstance(raw, list) or not all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], int) for e in raw
    ):
        raise ConfigError(f"[llm.{where}]: examples must be [[text, label index], ...], got {raw!r}")
    return tuple((text, label) for text, label in raw)


def parse_llm_section(raw: dict) -> dict[int, LlmPrompt]:
    """``[llm]`` holds the prompt of both LLM tiers; ``[llm.llm_small]`` / ``[llm.llm_large]`` override keys
    for one tier (the measured best prompt differs per model: README, "LLM tiers")."""
    llm_names = {contract.TIER_NAMES[t]: t for t in contract.LLM_TIERS}
    unknown = [k for k in raw if k not in _PROMPT_KEYS and k not in llm_names]
    if unknown:
        raise ConfigError(f"[llm]: unknown keys {unknown}; expected {list(_PROMPT_KEYS)} or tables {list(llm_names)}")
    base = {k: v for k, v in raw.items() if k in _PROMPT_KEYS}
    prompts = {}
    for name, tier in llm_names.items():
        override = raw.get(name, {})
        if not isinstance(override, dict):
            raise ConfigError(f"[llm.{name}] must be a table")
        bad = [k for k in override if k not in _PROMPT_KEYS]
        if bad:
            raise ConfigError(f"[llm.{name}]: unknown keys {bad}; expected {list(_PROMPT_KEYS)}")
        merged = base | override
        if "template" not in merged and "verbalizations" not in merged:
            continue
        calibrate = merged.get("calibrate")
        if calibrate is not None and not isinstance(calibrate, bool):
            raise ConfigError(f"[llm.{name}]: calibrate must be true or false, got {calibrate!r}")
        try:
            prompts[tier] = LlmPrompt(
                template=merged["template"],
                verbalizations=tuple(merged["verbalizations"]),
                few_shot=int(merged.get("few_shot", 0)),
                instruction=merged.get("instruction", ""),
                calibrate=calibrate,
                examples=_examples(merged.get("examples", []), name),
            )
        except KeyError as exc:
            raise ConfigError(f"[llm.{name}]: missing {exc.args[0]!r}") from exc
    return prompts


@dataclass(frozen=True)
class TaskSpec:
    name: str
    labels: tuple[str, ...]
    tiers: tuple[int, ...]
    dataset: DatasetSpec | None = None
    description: str = ""
    target: float = 0.9
    delta: float = 0.05
    #: Each LLM tier's prompt: template (one ``{text}``), verbalizations (one per label), few_shot
    #: (how many labelled examples the build draws into the prompt), calibrate.
    llm: dict[int, LlmPrompt] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ConfigError(f"task name {self.name!r} must match {_NAME_RE.pattern} (it becomes a Triton model name)")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"task {self.name!r}: labels must be at least two distinct names")
        if any(not label.strip() for label in self.labels):
            raise ConfigError(f"task {self.name!r}: empty label name")
        if not self.tiers or list(self.tiers) != sorted(set(self.tiers)):
            raise ConfigError(f"task {self.name!r}: tiers must be distinct and cheapest first")
        if not 0 < self.target <= 1 or not 0 < self.delta < 1:
            raise ConfigError(f"task {self.name!r}: need 0 < target <= 1 and 0 < delta < 1")
        missing = [contract.TIER_NAMES[t] for t in self.tiers if t in contract.LLM_TIERS and t not in self.llm]
        if missing:
            raise ConfigError(
                f"task {self.name!r}: LLM tiers {missing} need a prompt: an [llm] section (template, verbalizations)"
            )
        for tier, prompt in self.llm.items():
            try:
                PromptTemplate.from_json(prompt.gate_prompt(), self.n_labels)
            except ConfigError as exc:
                raise ConfigError(f"task {self.name!r}, {contract.TIER_NAMES[tier]}: {exc}") from exc

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    def digest(self) -> str:
        """A fingerprint of the definition; a build records it, so an edited task is rebuilt, not reused."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def model_names(self) -> dict[int, str]:
        return {tier: contract.tier_model_name(self.name, tier) for tier in self.tiers}


#: Label lists up to this many characters are named after the row (where they score best: AG News 0.81 vs 0.69
#: before it, README "Teacher"); longer ones before it, once, in the cached prefix, so that a 77-label task does
#: not pay for its list on every row.
ANSWERS_AFTER_MAX_CHARS = 120


def prompt_from_question(prompt: str, labels: Sequence[str], place: str = "auto") -> tuple[str, str]:
    """``(instruction, template)`` of a prompt a user writes (``cascade task create --prompt --labels``): the
    question, and the allowed answers named ``"before"`` or ``"after"`` the row (``"auto"``: after, unless the
    list is longer than :data:`ANSWERS_AFTER_MAX_CHARS`). A prompt holding ``{text}`` is kept as the template."""
    answers = "Answer with one of: " + ", ".join(labels) + "."
    if place == "auto":
        place = "after" if len(answers) <= ANSWERS_AFTER_MAX_CHARS else "before"
    if place not in ("before", "after"):
        raise ConfigError(f"answers go 'before' or 'after' the row, not {place!r}")
    if "{text}" in prompt:
        before, after = prompt.split("{text}", 1)
        if place == "before":
            return answers, prompt
        return "", f"{before}{{text}}{after.rstrip()}\n{answers}\nAnswer:"
    question = prompt.strip()
    if place == "before":
        return f"{question}\n{answers}", "Text: {text}\nAnswer:"
    return question, f"Text: {{text}}\n{answers}\nAnswer:"


def parse_tiers(names: list[str | int]) -> tuple[int, ...]:
    tiers = []
    for name in names:
        if isinstance(name, int) and name in contract.TIER_NAMES:
            tiers.append(name)
        elif isinstance(name, str) and name in contract.TIER_BY_NAME:
            tiers.append(contract.TIER_BY_NAME[name])
        else:
            raise ConfigError(f"unknown tier {name!r}; known: {', '.join(contract.TIER_BY_NAME)}")
    return tuple(tiers)


def load_task(path_or_name: str | Path) -> TaskSpec:
    """Load a task from a TOML file, or by name from the project's ``tasks/`` folder."""
    path = Path(path_or_name)
    if not path.suffix:
        path = TASKS_DIR / f"{path_or_name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TASKS_DIR.glob("*.toml")))
        raise ConfigError(f"no task file {path} (tasks shipped: {known})")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    known_keys = {"name", "labels", "tiers", "dataset", "description", "calibration", "llm"}
    extra = {k: v for k, v in raw.items() if k not in known_keys}
    try:
        dataset = DatasetSpec(**raw["dataset"]) if "dataset" in raw else None
        calibration = raw.get("calibration", {})
        llm = parse_llm_section(raw.get("llm", {}))
        return TaskSpec(
            name=raw["name"],
            labels=tuple(raw["labels"]),
            tiers=parse_tiers(raw.get("tiers", ["logreg", "xgboost", "encoder"])),
            dataset=dataset,
            description=raw.get("description", ""),
            target=float(calibration.get("target", 0.9)),
            delta=float(calibration.get("delta", 0.05)),
            llm=llm,
            extra=extra,
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: bad or missing field: {exc}") from exc


def load_split(task: TaskSpec, split: str, root: str | Path | None = None, limit: int | None = None):
    """Rows of a dataset split as ``(texts, label_indices)``; label names are mapped to indices."""
    if task.dataset is None:
        raise ConfigError(f"task {task.name!r} has no dataset section")
    ds = task.dataset
    path = ds.path(split, root)
    by_name = ds.label_encoding == "name"
    texts, raw = read_rows(path, ds.text_column, ds.label_column, limit, labels_as_text=by_name)
    if by_name:
        index = {label: i for i, label in enumerate(task.labels)}
        unknown = set(raw) - set(index)
        if unknown:
            raise ConfigError(f"{path}: labels {sorted(unknown)[:5]} not in task labels {task.labels}")
        labels = [index[v] for v in raw]
    else:
        try:
            labels = [int(v) for v in raw]
        except ValueError as exc:
            raise ConfigError(f"{path}: column {ds.label_column!r} holds a label that is no index: {exc}") from exc
        if labels and (min(labels) < 0 or max(labels) >= task.n_labels):
            raise ConfigError(f"{path}: label index out of range 0..{task.n_labels - 1}")
    return texts, labels
