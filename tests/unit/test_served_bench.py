"""The served benchmark's pieces that decide what is reported: the report rows no sample takes, the prompts'
examples left out of them, the committed label cache (dump, load), and the build's stated target."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cascade.errors import ConfigError, InvalidInput
from cascade_export.distill.label_store import LabelStore
from cascade_export.distill.table_rows import held_out_rows, sample_rows


def test_held_out_rows_are_never_sampled():
    held = set(held_out_rows(10_000, 500).tolist())
    assert len(held) == 500
    for budget in (100, 1000, 6000, 9500):  # any sample of the same seed up to n_rows - 500
        assert not held & set(sample_rows(10_000, budget).tolist())
    assert held & set(sample_rows(10_000, 9501).tolist())  # one more row and they meet
    with pytest.raises(InvalidInput):
        held_out_rows(100, 100)


def test_report_rows_leave_out_the_prompt_examples_and_check_their_size():
    from cascade.bench.served import report_rows
    from cascade.tasks import load_split, load_task

    task = load_task("sst2")
    rows, how = report_rows(task, 200, 1000)
    texts, gold = load_split(task, "train")
    assert len(rows) == 200 and how["left_out"] == 0
    assert all(texts[i] == text and task.labels[gold[i]] == label for i, text, label in rows)
    assert not {i for i, _, _ in rows} & set(sample_rows(len(texts), 1000).tolist())
    fewer, how = report_rows(task, 200, 1000, exclude={rows[0][1], rows[5][1]})
    assert len(fewer) == 198 and how["left_out"] == 2
    with pytest.raises(ConfigError, match="exceed"):
        report_rows(task, 500, len(texts))


def test_the_prompt_searchs_training_rows_stay_out_of_the_report():
    from cascade.bench.served import prompt_search_rows, report_rows
    from cascade.tasks import load_task

    assert prompt_search_rows("sst2") == set()  # SST-2's prompt search scores validation rows
    searched = prompt_search_rows("ag_news")
    assert len(searched) > 900
    rows, how = report_rows(load_task("ag_news"), 7000, 1000)
    assert how["left_out"] >= 500 and not searched & {text for _, text, _ in rows}


def test_prompt_examples_come_from_the_teacher_and_the_gate(tmp_path):
    from cascade.bench.served import prompt_examples

    prompts = {"llm_large": {"template": "{text}", "few_shot": [["a fine film", 1], ["a dud", 0]]}}
    (tmp_path / "config.pbtxt").write_text(
        'name: "t"\nbackend: "python"\nparameters { key: "prompts" value { string_value: '
        + json.dumps(json.dumps(prompts))
        + " } }\n"
    )
    teacher = {"template": "{text}", "few_shot": [["moving", 1]]}
    assert prompt_examples(teacher, tmp_path) == {"a fine film", "a dud", "moving"}
    assert prompt_examples(None, tmp_path) == {"a fine film", "a dud"}


def test_the_label_cache_round_trips_through_its_committed_file(tmp_path):
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    with LabelStore(tmp_path / "a.sqlite") as a:
        a.put("sst2", "llm_large:q", ["3", "7"], ["good", "bad"], [0, 1], probs)
        a.put("ag_news", "llm_large:q", ["1"], ["news"], [2])
        assert a.dump(tmp_path / "c.jsonl.gz", "sst2") == 2
        first = (tmp_path / "c.jsonl.gz").read_bytes()
        a.dump(tmp_path / "c.jsonl.gz", "sst2")
        assert (tmp_path / "c.jsonl.gz").read_bytes() == first  # the same cache, the same bytes: clean diffs
    with LabelStore(tmp_path / "b.sqlite") as b:
        b.put("sst2", "llm_large:q", ["3"], ["good"], [1])  # a row the cache holds stays as it is
        assert b.load(tmp_path / "c.jsonl.gz", "sst2") == 2
        assert b.get("sst2", "llm_large:q", ["3", "7"], ["good", "bad"]) == {"3": 1, "7": 1}
        assert b.get_probs("sst2", "llm_large:q", ["7"], ["bad"]) == {"7": [0.2, 0.8]}
        assert b.get("sst2", "llm_large:q", ["7"], ["edited"]) == {}  # an edited row is labelled again
        assert b.count("ag_news") == 0


def test_a_build_target_out_of_range_stops_before_training(tmp_path, capsys):
    from cascade.cli.main import main

    assert main(["build", "--repo", str(tmp_path / "repo"), "--target", "1.5", "--no-save"]) != 0
    assert "--target 1.5: the agreement to guarantee must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()  # nothing trained, nothing written
