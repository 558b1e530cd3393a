"""A task from a question and its labels (``cascade task create``'s first step): its
:class:`~cascade.tasks.TaskSpec` and the ``task.toml`` that defines it."""

from __future__ import annotations

from collections.abc import Sequence

from cascade import contract

CREATE_TIERS = ("logreg", "xgboost", "encoder", "llm_small", "llm_large")


def task_from_prompt(
    name: str, labels: Sequence[str], prompt: str, tiers: Sequence[str] = CREATE_TIERS, form: dict | None = None
):
    """A task from a question and its labels. Its LLM prompt is ``form`` (a prompt's JSON form: the one the teacher
    check chose on the user's examples), else task create's own: the allowed answers named
    (:func:`cascade.tasks.prompt_from_question`), the labels as the verbalizations, calibrated."""
    from cascade.tasks import LlmPrompt, TaskSpec, parse_tiers, prompt_from_question

    labels = tuple(label.strip() for label in labels)
    if form is None:
        instruction, template = prompt_from_question(prompt, labels)
        form = {"instruction": instruction, "template": template, "verbalizations": list(labels), "calibrate": True}
    instruction, template, words = form["instruction"], form["template"], tuple(form["verbalizations"])
    calibrate = bool(form.get("calibrate", True))
    examples = tuple((str(text), int(label)) for text, label in form.get("few_shot", []))
    llm = LlmPrompt(template, words, instruction=instruction, calibrate=calibrate, examples=examples)
    spec = TaskSpec(
        name=name,
        labels=labels,
        tiers=parse_tiers(list(tiers)),
        description=prompt.strip(),
        llm={t: llm for t in contract.LLM_TIERS},
    )
    toml = "\n".join(
        [
            "# Written by `cascade task create`.",
            f"name = {json_str(name)}",
            f"description = {json_str(spec.description)}",
            f"labels = [{', '.join(json_str(x) for x in labels)}]",
            f"tiers = [{', '.join(json_str(contract.TIER_NAMES[t]) for t in spec.tiers)}]",
            "",
            "[llm]",
            f"instruction = {json_str(instruction)}",
            f"template = {json_str(template)}",
            f"verbalizations = [{', '.join(json_str(x) for x in words)}]",
            "few_shot = 0",
            f"calibrate = {'true' if calibrate else 'false'}",
            *([f"examples = [{', '.join(f'[{json_str(t)}, {i}]' for t, i in examples)}]"] if examples else []),
            "",
        ]
    )
    return spec, toml


def json_str(value: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML escapes)."""
    import json

    return json.dumps(value, ensure_ascii=False)
