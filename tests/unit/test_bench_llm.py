"""cascade.bench.llm takes its tasks' labels and tuned prompts from tasks/*.toml (no model, no data)."""

from __future__ import annotations

from pathlib import Path

from cascade.bench import llm as bench_llm
from cascade.contract import TIER_LLM_LARGE, TIER_LLM_SMALL
from cascade.llm.prompts import PromptTemplate
from cascade.tasks import load_task

#: Variants named after the prompt a task file chose for a tier.
TUNED = {
    ("sst2", "review"): TIER_LLM_SMALL,
    ("sst2", "review_terrible"): TIER_LLM_LARGE,
    ("ag_news", "lower"): TIER_LLM_SMALL,
    ("ag_news", "topic"): TIER_LLM_LARGE,
}
#: The prompt styles a new user writes: the task's label names are the answers.
LABEL_STYLES = ("plain", "chatml", "ask", "create", "create_before", "create_after")


def test_tasks_and_prompts_follow_the_task_files():
    for name, bench in bench_llm.TASKS.items():
        spec = load_task(name)
        assert (bench.labels, bench.dir) == (spec.labels, spec.dataset.dir)
        for variant, kwargs in bench_llm.PROMPTS[name].items():
            template = PromptTemplate(**kwargs)
            assert len(template.verbalizations) == spec.n_labels, variant
            if variant in LABEL_STYLES:
                assert template.verbalizations == spec.labels, variant
        assert set(LABEL_STYLES) <= set(bench_llm.PROMPTS[name])
    for (name, variant), tier in TUNED.items():
        tuned = load_task(name).llm[tier]
        template = bench_llm.make_template(bench_llm.TASKS[name], variant + "+prefix", Path("/nonexistent"))
        assert (template.template, template.verbalizations) == (tuned.template, tuned.verbalizations)
        assert template.instruction == tuned.instruction


def test_answers_named_in_questions():
    # The lists a question names are the task's answer words, in the words of the variant.
    ask = bench_llm.PROMPTS["ag_news"]["ask"]["template"]
    assert "World, Sports, Business or Sci/Tech?" in ask
    assert "positive or negative?" in bench_llm.PROMPTS["sst2"]["question"]["template"]
    assert bench_llm.PROMPTS["ag_news"]["topic_science"]["verbalizations"] == ("World", "Sports", "Business", "Science")
