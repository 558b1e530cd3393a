"""Task definitions (TOML) and dataset loading."""

import pytest

from cascade.errors import ConfigError
from cascade.tasks import load_split, load_task


def write(tmp_path, body):
    path = tmp_path / "t.toml"
    path.write_text(body)
    return path


def test_shipped_tasks_load():
    sst2 = load_task("sst2")
    assert sst2.labels == ("negative", "positive") and sst2.tiers[0] == 0
    assert load_task("ag_news").n_labels == 4


def test_dataset_rows_and_labels(tmp_path):
    texts, labels = load_split(load_task("sst2"), "validation", limit=20)
    assert len(texts) == len(labels) == 20 and set(labels) <= {0, 1}
    with pytest.raises(ConfigError, match="not found"):
        load_split(load_task("sst2"), "validation", root=tmp_path)


LLM = (
    'name = "t"\nlabels = ["a", "b"]\ntiers = ["logreg", "llm_small", "llm_large"]\n'
    '[llm]\ntemplate = "Q: {text}\\nA:"\nverbalizations = ["x", "y"]\n'
)


def test_llm_tables_override_the_shared_prompt(tmp_path):
    task = load_task(write(tmp_path, LLM + "few_shot = 2\n[llm.llm_large]\nfew_shot = 8\ncalibrate = false\n"))
    small, large = task.llm[3], task.llm[4]
    assert small.template == large.template == "Q: {text}\nA:"
    assert (small.few_shot, small.calibrate) == (2, None)
    assert (large.few_shot, large.calibrate) == (8, False)
    assert large.gate_prompt([("t", 1)])["calibrate"] is False and "calibrate" not in small.gate_prompt()


@pytest.mark.parametrize(
    "body, message",
    [
        ('name = "Bad Name"\nlabels = ["a", "b"]\n', "must match"),
        ('name = "t"\nlabels = ["a"]\n', "at least two"),
        ('name = "t"\nlabels = ["a", "b"]\ntiers = ["logreg", "magic"]\n', "unknown tier"),
        ('name = "t"\nlabels = ["a", "b"]\ntiers = ["logreg", "llm_small"]\n', "need a prompt: an [llm] section"),
        (LLM + "[llm.llm_huge]\nfew_shot = 2\n", "unknown keys ['llm_huge']"),
        (LLM + "[llm.llm_large]\nshots = 2\n", "[llm.llm_large]: unknown keys ['shots']"),
        (LLM + 'calibrate = "sometimes"\n', "calibrate must be true or false"),
        (
            'name = "t"\nlabels = ["a", "b"]\ntiers = ["logreg", "llm_large"]\n'
            '[llm]\ntemplate = "Q: {text}\\nA:"\nverbalizations = ["x", "y", "z"]\n',
            "3 prompt verbalizations for 2 labels",
        ),
        ('name = "t"\nlabels = [\n', "t.toml"),
    ],
)
def test_bad_task_files_fail_clearly(tmp_path, body, message):
    with pytest.raises(ConfigError) as info:
        load_task(write(tmp_path, body))
    assert message in str(info.value)


def test_unknown_task_names_the_shipped_ones():
    with pytest.raises(ConfigError, match="tasks shipped: ag_news, clinc150, sst2"):
        load_task("nope")


def test_few_shot_draw_is_balanced_and_prefers_moderate_rows():
    import numpy as np

    from cascade_export.build.llm_tiers import FEW_SHOT_WORDS, draw_few_shot

    lo, _ = FEW_SHOT_WORDS
    moderate = " ".join(["word"] * lo)
    texts = [f"{moderate} {i}" for i in range(6)] + ["short"] * 20
    labels = np.array([0, 1, 2, 0, 1, 2] + [0, 1] * 10)
    shots = draw_few_shot(texts, labels, 6, 3, np.random.default_rng(0))
    assert sorted(label for _, label in shots) == [0, 0, 1, 1, 2, 2]
    assert all(text.startswith(moderate) for text, _ in shots)
    # Too few moderate rows for a label: fall back to any rows of it rather than fewer examples.
    shots = draw_few_shot(texts, labels, 9, 3, np.random.default_rng(0))
    assert sorted(label for _, label in shots) == [0, 0, 0, 1, 1, 1, 2, 2]  # label 2 has only 2 rows
    assert draw_few_shot(texts, labels, 0, 3, np.random.default_rng(0)) == []


def test_a_plain_question_reaches_the_teacher_with_its_answers_named():
    from cascade.llm.prompts import PromptTemplate
    from cascade.tasks import ANSWERS_AFTER_MAX_CHARS, prompt_from_question

    few = ["World", "Sports", "Business", "Sci/Tech"]
    instruction, template = prompt_from_question("What is this article about?", few)
    row = PromptTemplate(template=template, verbalizations=tuple(few), instruction=instruction).format("Stocks fell.")
    # a short list goes after the row, next to the answer slot; the question stays in the cached prefix
    assert row.prefix.startswith("What is this article about?") and "Sci/Tech" not in row.prefix
    assert row.suffix.endswith("Answer:") and "World, Sports, Business, Sci/Tech" in row.suffix

    many = [f"intent_number_{i}" for i in range(77)]
    assert len(", ".join(many)) > ANSWERS_AFTER_MAX_CHARS
    instruction, template = prompt_from_question("Which intent is this?", many)
    row = PromptTemplate(template=template, verbalizations=tuple(many), instruction=instruction).format("hi")
    # a long list is named once, before the row: no row pays for it
    assert "intent_number_76" in row.prefix and "intent_number" not in row.suffix

    instruction, template = prompt_from_question("Review: {text}\nSentiment:", ["negative", "positive"])
    assert template.startswith("Review: {text}\nSentiment") and "negative, positive" in template
    with pytest.raises(ConfigError, match="before' or 'after"):
        prompt_from_question("q", few, place="middle")
