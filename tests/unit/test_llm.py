"""The CPU LLM scorer (cascade.llm.scorer): prompt rendering without a model (scoring with the real SmolLM2:
tests/server/test_llm_server.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.errors import ConfigError, InvalidInput
from cascade.llm.prompts import (
    Prompt,
    PromptTemplate,
    answer_text,
    parse_scorer_inputs,
    parse_scorer_parameters,
    validate_candidates,
)

# The SST-2 prompt chosen by cascade.bench.llm for llm_small (as in tasks/sst2.toml).
SST2 = PromptTemplate(template="Review: {text}\nSentiment:", verbalizations=("negative", "positive"))


# --------------------------------------------------------------------------------------------- no model


def test_parse_scorer_inputs():
    prompt = np.array([[b"Review: ", b"great", b"\nSentiment:"]] * 2, dtype=np.object_)
    cands = np.array([[b"negative", b"positive"]] * 2, dtype=np.object_)
    prompts, names = parse_scorer_inputs(prompt, cands)
    assert prompts[0] == Prompt("Review: ", "great", "\nSentiment:") and names == ("negative", "positive")
    with pytest.raises(InvalidInput, match=r"PROMPT must be \[n, 3\]"):
        parse_scorer_inputs(prompt[:, :2], cands)
    with pytest.raises(InvalidInput, match="share the same CANDIDATES"):
        parse_scorer_inputs(prompt, np.array([[b"a", b"b"], [b"a", b"c"]], dtype=np.object_))
    with pytest.raises(InvalidInput, match="UTF-8"):
        parse_scorer_inputs(np.array([[b"x", b"\xff", b"y"]], dtype=np.object_), cands[:1])
    with pytest.raises(InvalidInput, match="duplicate"):
        parse_scorer_inputs(prompt[:1], np.array([[b"a", b"a"]], dtype=np.object_))


def test_parse_scorer_parameters():
    assert parse_scorer_parameters(None) is None and parse_scorer_parameters("") is None
    assert parse_scorer_parameters('{"calibrate": false}') is False
    assert parse_scorer_parameters({"calibrate": True}) is True
    with pytest.raises(InvalidInput, match="boolean"):
        parse_scorer_parameters('{"calibrate": "no"}')
    with pytest.raises(InvalidInput, match="unknown scorer parameters"):
        parse_scorer_parameters('{"temperature": 0.5}')


def test_format_zero_shot_splits_around_text():
    p = SST2.format("a fine film")
    assert p == Prompt(prefix="Review: ", content="a fine film", suffix="\nSentiment:")


def test_format_renders_instruction_and_few_shot_in_the_prefix():
    t = PromptTemplate(
        template="Review: {text}\nSentiment:",
        verbalizations=("negative", "positive"),
        few_shot=(("great fun", 1), ("a bore", 0)),
        instruction="Classify each review.",
    )
    p = t.format("x")
    assert p.prefix == (
        "Classify each review.\n\n"
        "Review: great fun\nSentiment: positive\n\n"
        "Review: a bore\nSentiment: negative\n\n"
        "Review: "
    )
    assert (p.content, p.suffix) == ("x", "\nSentiment:")


def test_answer_spacing_follows_the_suffix():
    assert answer_text("\nSentiment:", "positive") == ("\nSentiment:", " positive")
    assert answer_text("\nSentiment: ", "positive") == ("\nSentiment:", " positive")
    assert answer_text("<|im_start|>assistant\n", "positive") == ("<|im_start|>assistant\n", "positive")
    t = PromptTemplate(template="Q: {text}\nA:\n", verbalizations=("no", "yes"), few_shot=(("s", 1),))
    assert t.format("r").prefix == "Q: s\nA:\nyes\n\nQ: "


def test_text_at_the_edges_and_braces_elsewhere():
    t = PromptTemplate(template="{text}", verbalizations=("a", "b"))
    assert t.format("row") == Prompt("", "row", "")
    t = PromptTemplate(template='JSON {"k": {text}}', verbalizations=("a", "b"))
    assert t.format("v") == Prompt('JSON {"k": ', "v", "}")


@pytest.mark.parametrize("template", ["no field", "{text} and {text}", "{ text }"])
def test_template_needs_exactly_one_text_field(template):
    with pytest.raises(ConfigError, match="exactly once"):
        PromptTemplate(template=template, verbalizations=("a", "b"))


def test_template_validates_verbalizations_and_shots():
    with pytest.raises(ConfigError, match="duplicate"):
        PromptTemplate(template="{text}", verbalizations=("a", "a"))
    with pytest.raises(ConfigError, match="empty candidate"):
        PromptTemplate(template="{text}", verbalizations=("a", " "))
    with pytest.raises(ConfigError, match="out of range"):
        PromptTemplate(template="{text}", verbalizations=("a", "b"), few_shot=(("x", 2),))


@pytest.mark.parametrize(
    ("candidates", "match"),
    [([], "empty candidate list"), (["a", ""], "empty candidate"), (["a", "b", "a"], "duplicate"), ("ab", "sequence")],
)
def test_invalid_candidates(candidates, match):
    with pytest.raises(InvalidInput, match=match):
        validate_candidates(candidates)


def test_gguf_path_rejects_unknown_names():
    from cascade.llm.gguf import gguf_path

    with pytest.raises(ConfigError, match="unknown LLM"):
        gguf_path("gpt-5")
    with pytest.raises(ConfigError, match="unknown quantization"):
        gguf_path("smollm2-135m:q2_k")


def test_a_prompt_has_one_shape_and_its_json_form_round_trips():
    from cascade.tasks import LlmPrompt

    spec = LlmPrompt(
        "Review: {text}\nSentiment:", ("negative", "positive"), few_shot=1, instruction="Rate.", calibrate=False
    )
    as_json = spec.gate_prompt([("a fine film", 1)])
    template = PromptTemplate.from_json(as_json, n_labels=2)
    assert template.few_shot == (("a fine film", 1),) and template.calibrate is False
    assert template.to_json() == as_json
    assert "calibrate" not in PromptTemplate.from_json(as_json | {"calibrate": None}).to_json()
    for bad, message in (
        (as_json | {"few_shot": [["x", 2]]}, "few-shot example"),
        (as_json | {"verbalizations": "ab"}, "list of non-empty strings"),
        (as_json | {"instruction": 3}, "instruction must be a string"),
        (as_json, "2 prompt verbalizations for 3 labels"),
    ):
        with pytest.raises(ConfigError, match=message):
            PromptTemplate.from_json(bad, n_labels=3 if bad is as_json else None)
