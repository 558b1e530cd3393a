"""The teacher checked on gold examples through a real server's large tier: the forms scored, the best kept with its
interval; and a task whose examples the teacher cannot answer is stopped before any row is labelled."""

import time

import pandas as pd
import pytest

from cascade.errors import ConfigError
from cascade.tasks import load_split, load_task
from cascade_client import CascadeClient
from cascade_export.distill.commands import create_task
from cascade_export.distill.teacher_check import check_teacher
from cascade_export.distill.teachers import ServerTeacher

pytestmark = pytest.mark.server


def test_the_teacher_is_checked_on_examples_and_the_best_form_kept(explicit_server):
    texts, gold = load_split(load_task("sst2"), "train", limit=20)
    with CascadeClient(explicit_server.grpc_url, timeout_s=600) as client:
        check = check_teacher(
            lambda p: ServerTeacher(client, p), "Is this movie review positive or negative?",
            ["negative", "positive"], texts, gold,
        )  # fmt: skip
    forms = {f["form"]: f["accuracy"] for f in check["forms"]}
    # 2 label frames and yes/no both ways, each raw and calibrated; then the best with 4 examples in its prompt
    assert len(forms) == 10 and any(name.startswith("yes or no") for name in forms)
    assert sum("4 examples in the prompt" in name for name in forms) == 2
    assert check["accuracy"] == max(forms.values()) == forms[check["chosen"]["form"]]
    low, high = check["interval"]
    assert low <= check["accuracy"] <= high and check["confidence"] == 0.95
    assert check["accuracy"] >= 0.75 and check["verdict"] == "fit"  # SST-2 is a task this teacher can do
    assert sum(sum(row.values()) for row in check["confusion"].values()) == 20


def test_a_task_whose_examples_the_teacher_cannot_answer_stops_before_labelling(explicit_server, tmp_path):
    # The examples call each review by the other sentiment's word (three labels, so that no yes/no reading turns them
    # round): what the teacher reads is never the examples' label, and no form beats the most common label.
    texts, gold = load_split(load_task("sst2"), "train", limit=20)
    words = ["negative", "positive", "mixed"]
    pd.DataFrame({"text": texts, "label": [words[1 - g] for g in gold]}).to_csv(tmp_path / "examples.csv", index=False)
    pd.DataFrame({"text": texts * 3}).to_csv(tmp_path / "table.csv", index=False)
    start = time.monotonic()
    with pytest.raises(ConfigError, match="cannot do this task on your 20 examples") as info:
        create_task(
            "swapped", tmp_path / "table.csv", "Is this movie review positive, negative or mixed?", words,
            repo=tmp_path / "repo", work_root=tmp_path / "runs", url=explicit_server.grpc_url, progress=False,
            examples=tmp_path / "examples.csv",
        )  # fmt: skip
    assert "Nothing was labelled" in str(info.value) and "Tried:" in str(info.value)
    assert not (tmp_path / "runs" / "swapped" / "labels.sqlite").exists() and not (tmp_path / "repo").exists()
    assert time.monotonic() - start < 300


def test_without_examples_the_first_labels_confirmed_on_a_terminal_are_the_examples(explicit_server, tmp_path):
    # A terminal user shown the teacher's first labels corrects every one to the other sentiment's word (three labels,
    # as above): the corrected rows are the examples, and the teacher that cannot answer them stops the job.
    texts, gold = load_split(load_task("sst2"), "train", limit=60)
    truth = dict(zip(texts, gold, strict=True))
    words = ["negative", "positive", "mixed"]
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "table.csv", index=False)
    shown = []

    def confirm(rows, predicted):
        shown.append((rows, predicted))
        return [1 - truth[t] for t in rows]

    with pytest.raises(ConfigError, match="cannot do this task on your 20 examples"):
        create_task(
            "confirmed", tmp_path / "table.csv", "Is this movie review positive, negative or mixed?", words,
            repo=tmp_path / "repo", work_root=tmp_path / "runs", url=explicit_server.grpc_url, progress=False,
            budget=50, confirm=confirm,
        )  # fmt: skip
    ((rows, predicted),) = shown
    assert len(rows) == 20 and set(rows) <= set(texts) and all(0 <= p < 3 for p in predicted)
    assert sum(p == truth[t] for t, p in zip(rows, predicted, strict=True)) >= 12  # the teacher's own labels
    assert not (tmp_path / "runs" / "confirmed" / "labels.sqlite").exists()


def test_cascade_label_checks_the_tasks_own_prompt_on_examples_first(explicit_server, tmp_path):
    from cascade_export.distill.commands import run_label

    task = load_task("sst2")
    texts, gold = load_split(task, "train", limit=20)
    pd.DataFrame({"text": texts * 3}).to_csv(tmp_path / "table.csv", index=False)
    swapped = [1 - g for g in gold]  # a review's sentiment called the other way round: the task's prompt never agrees
    with pytest.raises(ConfigError, match="cannot do this task on your 20 examples") as info:
        run_label(task, tmp_path / "runs", tmp_path / "table.csv", budget=40, url=explicit_server.grpc_url,
                  progress=False, examples=(texts, swapped))  # fmt: skip
    assert "the task's prompt" in str(info.value)
    assert not (tmp_path / "runs" / "sst2" / "labels.sqlite").exists()
