"""The teacher check on gold examples, with a scripted teacher: the forms tried, the one kept, the interval, and the
verdict that stops a task create before it labels."""

import numpy as np
import pytest

from cascade.llm.prompts import CONTENT_FREE, PromptTemplate
from cascade_export.distill.teacher_check import YES_NO, check_teacher, frames, interval, unfit_message

LABELS = ["ham", "spam"]
TEXTS = [f"message {i}" for i in range(20)]
GOLD = [0] * 14 + [1] * 6


class Scripted:
    """A teacher whose probabilities a function of (prompt JSON, text) gives; it records what it was asked."""

    def __init__(self, answer):
        self.answer, self.asked = answer, []

    def __call__(self, prompt: dict):
        PromptTemplate.from_json(prompt)  # a valid prompt, raw (the check calibrates from the content-free rows)
        assert prompt["calibrate"] is False
        outer = self

        class Teacher:
            def label(self, positions, texts):
                outer.asked.append((prompt, list(texts)))
                return np.array([outer.answer(prompt, t) for t in texts], dtype=np.float32)

        return Teacher()


def test_the_forms_tried():
    binary = frames("Is this SMS message spam?", LABELS)
    assert [f.name for f in binary][0] == "label names, answers where task create puts them"
    assert binary[-1].words == YES_NO and len(binary[-1].readings) == 2
    described = frames("Is this spam?", LABELS, ["an ordinary message", "unsolicited advertising"])
    assert any("descriptions" in f.name and f.words[1] == "unsolicited advertising" for f in described)
    many = frames("Which intent?", [f"intent{i}" for i in range(12)])
    assert len(many) == 1 and many[0].words[0] == "intent0"  # one frame for many labels, no yes/no


def test_the_best_form_is_kept_and_the_yes_no_question_may_be_read_either_way():
    gold = dict(zip(TEXTS, GOLD, strict=True))

    def answer(prompt, text):
        if prompt["verbalizations"] == list(YES_NO):  # "yes" means ham here: right on every example
            return [0.9, 0.1] if text in CONTENT_FREE or gold[text] == 1 else [0.2, 0.8]
        return [0.5, 0.5] if text in CONTENT_FREE else [0.6, 0.4]  # always "ham": the majority, 70%

    teacher = Scripted(answer)
    check = check_teacher(teacher, "Is this SMS message spam?", LABELS, TEXTS, GOLD)
    assert check["chosen"]["form"].startswith("yes or no, yes = ham") and check["accuracy"] == 1.0
    assert check["chosen"]["prompt"]["verbalizations"] == ["yes", "no"]  # ham's word first: the label order
    assert check["verdict"] == "fit" and check["interval"][0] > 0.8
    assert check["confusion"] == {"ham": {"ham": 14}, "spam": {"spam": 6}}
    assert all(texts[-2:] == list(CONTENT_FREE) for _, texts in teacher.asked)  # each frame scored once
    # ... and the best of them once more per half of the examples, with the other half's examples in its prompt
    assert len(teacher.asked) == len(frames("Is this SMS message spam?", LABELS)) + 2


def test_calibration_is_the_scorers_own_from_the_content_free_rows():
    # Raw, the teacher calls every row spam; its prior leans to spam even more, so calibrated it tells them apart.
    gold = dict(zip(TEXTS, GOLD, strict=True))

    def answer(prompt, text):
        if text in CONTENT_FREE:
            return [0.1, 0.9]
        return [0.3, 0.7] if gold[text] == 0 else [0.05, 0.95]

    check = check_teacher(Scripted(answer), "Is this spam?", LABELS, TEXTS, GOLD)
    raw = [f for f in check["forms"] if f["form"].endswith("raw") and "yes" not in f["form"]]
    assert raw and all(f["accuracy"] == pytest.approx(0.3) for f in raw)
    assert check["accuracy"] == 1.0 and check["chosen"]["prompt"]["calibrate"] is True


def test_a_teacher_no_better_than_the_majority_label_is_unfit():
    # Three labels (no yes/no reading to turn a wrong teacher round): it answers the next label of each example's.
    labels, gold = ["ham", "spam", "phish"], [0] * 10 + [1] * 5 + [2] * 5
    truth = dict(zip(TEXTS, gold, strict=True))

    def answer(prompt, text):
        return [1 / 3] * 3 if text in CONTENT_FREE else np.eye(3)[(truth[text] + 1) % 3] * 0.8 + 0.1

    check = check_teacher(Scripted(answer), "Spam?", labels, TEXTS, gold)
    assert check["accuracy"] == 0.0 and check["majority_rate"] == 0.5
    assert check["verdict"] == "unfit" and "no better than always answering 'ham'" in check["reason"]
    message = unfit_message(check, "llm_large")
    assert "Nothing was labelled" in message and "--labels 'ham=" in message and "Tried:" in message


def test_one_label_for_every_example_or_a_floor_not_met_is_unfit():
    gold = [0] * 4 + [1] * 16
    always_spam = check_teacher(Scripted(lambda p, t: [0.3, 0.7]), "Spam?", LABELS, TEXTS, gold)
    assert always_spam["accuracy"] == 0.8 and always_spam["interval"][1] > 0.8  # not caught by the majority rule
    assert always_spam["verdict"] == "unfit" and "same label" in always_spam["reason"]
    good = dict(zip(TEXTS, gold, strict=True))
    mostly = Scripted(lambda p, t: [0.5, 0.5] if t in CONTENT_FREE else [[0.7, 0.3], [0.3, 0.7]][good[t]])
    assert check_teacher(mostly, "Spam?", LABELS, TEXTS, gold)["verdict"] == "fit"
    wrong = {TEXTS[0], TEXTS[5], TEXTS[6], TEXTS[7]}  # one ham and three spam answered wrong: 16 of 20 right
    some = Scripted(lambda p, t: [0.5, 0.5] if t in CONTENT_FREE else [[0.7, 0.3], [0.3, 0.7]][good[t] ^ (t in wrong)])
    assert check_teacher(some, "Spam?", LABELS, TEXTS, gold)["verdict"] == "fit"
    floor = check_teacher(some, "Spam?", LABELS, TEXTS, gold, min_accuracy=0.99)
    assert floor["accuracy"] == 0.8 and floor["interval"][1] < 0.99
    assert floor["verdict"] == "unfit" and "--min-teacher-accuracy" in floor["reason"]


def test_the_interval_is_two_sided_clopper_pearson():
    low, high = interval(17, 20, 0.05)
    assert low == pytest.approx(0.6211, abs=1e-3) and high == pytest.approx(0.9679, abs=1e-3)
    assert interval(20, 20, 0.05)[1] == 1.0 and interval(0, 20, 0.05)[0] == 0.0


def test_labels_with_descriptions_and_the_examples_file(tmp_path):
    import pandas as pd

    from cascade.cli.build import label_words
    from cascade.errors import ConfigError
    from cascade_export.distill.examples import read_examples

    assert label_words("ham, spam") == (["ham", "spam"], None)
    assert label_words("ham=an ordinary message,spam=") == (["ham", "spam"], ["an ordinary message", "spam"])
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(12)], "label": ["ham", "spam"] * 6})
    frame.to_csv(tmp_path / "ex.csv", index=False)
    texts, gold = read_examples(tmp_path / "ex.csv", ["ham", "spam"], "text", "label")
    assert texts[:2] == ["t0", "t1"] and gold[:4] == [0, 1, 0, 1]
    with pytest.raises(ConfigError, match=r"labels \['spam'\] are not among"):
        read_examples(tmp_path / "ex.csv", ["ham", "other"], "text", "label")
    frame.head(5).to_csv(tmp_path / "few.csv", index=False)
    with pytest.raises(ConfigError, match="5 rows; give at least 10"):
        read_examples(tmp_path / "few.csv", ["ham", "spam"], "text", "label")


def test_the_server_teacher_keeps_each_request_within_the_scorers_batch_limit():
    import threading

    from cascade import contract
    from cascade_export.distill.teachers import ServerTeacher

    class Client:
        def __init__(self):
            self.sizes, self.lock = [], threading.Lock()

        def model_parameters(self, model):
            return {}

        def score(self, model, prompts, candidates, calibrate):
            with self.lock:
                self.sizes.append(len(prompts))
            return np.tile([0.25, 0.75], (len(prompts), 1)), np.zeros(len(prompts), bool)

    client = Client()
    prompt = {"template": "Text: {text}\nAnswer:", "verbalizations": ["a", "b"]}
    probs = ServerTeacher(client, prompt).label(None, [f"row {i}" for i in range(300)])
    assert probs.shape == (300, 2) and sum(client.sizes) == 300
    assert max(client.sizes) <= contract.LLM_MAX_BATCH_SIZE and len(client.sizes) == 5
    client.sizes.clear()
    ServerTeacher(client, prompt).label(None, ["one", "two", "three"])
    assert sorted(client.sizes) == [1, 2]  # small batches: one request per instance, as before


def test_examples_in_the_prompt_are_cross_validated_and_kept_when_they_help():
    gold = dict(zip(TEXTS, GOLD, strict=True))

    def answer(prompt, text):  # right only with examples in its prompt; else always "ham" (70%)
        if text in CONTENT_FREE:
            return [0.5, 0.5]
        return [[0.9, 0.1], [0.1, 0.9]][gold[text]] if prompt["few_shot"] else [0.6, 0.4]

    teacher = Scripted(answer)
    check = check_teacher(teacher, "Is this spam?", LABELS, TEXTS, GOLD)
    assert check["chosen"]["form"].endswith("4 examples in the prompt, calibrated") and check["accuracy"] == 1.0
    kept = check["chosen"]["prompt"]["few_shot"]
    assert len(kept) == 4 and sorted(label for _, label in kept) == [0, 0, 1, 1]
    with_shots = [(p, texts) for p, texts in teacher.asked if p["few_shot"]]
    assert len(with_shots) == 2 and sum(len(texts) - 2 for _, texts in with_shots) == len(TEXTS)
    for prompt, texts in with_shots:  # no example is scored by a prompt that holds it
        assert not {text for text, _ in prompt["few_shot"]} & set(texts)
    few = check_teacher(Scripted(answer), "Is this spam?", LABELS, TEXTS[:12], GOLD[:12])
    assert not any("examples in the prompt" in f["form"] for f in few["forms"])  # too few examples to split


def test_the_form_kept_is_the_tasks_prompt_examples_included(tmp_path):
    from cascade.errors import ConfigError
    from cascade.tasks import load_task
    from cascade_export.distill.prompt_task import task_from_prompt

    form = {"instruction": "Q", "template": "Text: {text}\nAnswer:", "verbalizations": ["no", "yes"],
            "calibrate": False, "few_shot": [['win "cash" now', 1], ["see you at 6", 0]]}  # fmt: skip
    _, toml = task_from_prompt("sms", LABELS, "Is this SMS message spam?", ["logreg", "llm_large"], form)
    (tmp_path / "sms.toml").write_text(toml)
    task = load_task(tmp_path / "sms.toml")
    assert task.llm[4].gate_prompt() == form | {"calibrate": False}  # the labelling teacher's and the gate's prompt
    (tmp_path / "bad.toml").write_text(toml.replace('[["win', '[[1, "win'))
    with pytest.raises(ConfigError, match="examples must be"):
        load_task(tmp_path / "bad.toml")


def test_the_check_is_printed_with_the_form_kept(capsys):
    from cascade.cli.build import print_teacher_check

    gold = dict(zip(TEXTS, GOLD, strict=True))
    check = check_teacher(Scripted(lambda p, t: [0.5, 0.5] if t in CONTENT_FREE else [[0.8, 0.2], [0.2, 0.8]][gold[t]]),
                          "Spam?", LABELS, TEXTS, GOLD)  # fmt: skip
    print_teacher_check(check)
    out = capsys.readouterr().out
    assert "(kept)" in out and "interval" in out and check["chosen"]["form"][:30] in out.replace("\n", " ")


def test_after_labelling_task_create_warns_of_labels_far_from_the_examples_and_of_no_cheap_tier():
    from cascade_export.distill.examples import label_warnings

    learned = [
        {"tier": 0, "enabled": True, "agreement": 0.95, "lower_bound": 0.92},  # TierCalibration.to_dict's keys
        {"tier": 4, "enabled": True, "agreement": 1.0, "lower_bound": None},
    ]
    labelled = {"label_counts": {"ham": 561, "spam": 439}}  # the teacher called 43.9% spam
    gold = [0] * 86 + [1] * 14  # the user's examples: 14% spam
    (warning,) = label_warnings(labelled, learned, LABELS, gold)
    assert (
        "far from your examples' shares (total variation 0.30; teacher vs examples: ham 56% vs 86%, spam 44% vs 14%)"
        in warning
    )
    many = [f"intent{i}" for i in range(40)]
    counts = dict.fromkeys(many, 0) | {"intent0": 900, "intent1": 100}
    (warning,) = label_warnings({"label_counts": counts}, learned, many, list(range(40)) * 2)
    assert "intent0 90% vs 2%, intent1 10% vs 2%" in warning and "and 35 more" in warning and warning.count("%") == 10
    assert label_warnings({"label_counts": {"ham": 850, "spam": 150}}, learned, LABELS, gold) == []
    none = [dict(learned[0], enabled=False, agreement=0.66, lower_bound=0.51), learned[1]]
    (warning,) = label_warnings({"label_counts": {"ham": 850, "spam": 150}}, none, LABELS, None)
    assert "no cheap tier learned" in warning and "logreg" in warning and "0.66" in warning


def test_examples_of_one_label_are_said_to_prove_nothing_rather_than_stop_the_job():
    all_ham = [0] * 20
    check = check_teacher(Scripted(lambda p, t: [0.8, 0.2]), "Spam?", LABELS, TEXTS, all_ham)
    assert check["accuracy"] == 1.0 and check["majority_rate"] == 1.0
    assert check["verdict"] == "fit" and "all 'ham'" in check["reason"] and "every label" in check["reason"]


def test_a_tasks_own_prompt_is_checked_with_the_same_verdict():
    from cascade_export.distill.teacher_check import check_prompt

    template = PromptTemplate("Text: {text}\nAnswer:", ("ham", "spam"), calibrate=True)

    class Fixed:  # a ServerTeacher of the task's prompt: it answers spam for every row
        calibrate = True

        def __init__(self):
            self.template = template

        def label(self, positions, texts):
            return np.tile([0.2, 0.8], (len(texts), 1))

    check = check_prompt(Fixed(), LABELS, TEXTS, GOLD)
    assert [f["form"] for f in check["forms"]] == ["the task's prompt"] and check["accuracy"] == 0.3
    assert check["verdict"] == "unfit" and "always answering 'ham'" in check["reason"]
    assert PromptTemplate.from_json(check["chosen"]["prompt"]).template == template.template


def test_the_confusion_keeps_the_cells_that_are_not_zero_and_prints_the_worst_of_many():
    from cascade_export.distill.teacher_check import confusion, confusion_text

    labels = [f"intent{i}" for i in range(150)]
    gold = np.array([0, 0, 0, 1, 1, 2])
    table = confusion(gold, np.array([0, 5, 5, 1, 7, 2]), labels)
    assert table == {
        "intent0": {"intent5": 2, "intent0": 1},
        "intent1": {"intent1": 1, "intent7": 1},
        "intent2": {"intent2": 1},
    }
    assert confusion_text(table).startswith("confusion (gold -> answered): {")
    many = confusion(np.arange(150), (np.arange(150) + 1) % 150, labels)
    text = confusion_text(many)
    assert text.startswith("most frequent wrong answers") and text.count("->") == 11 and len(text) < 400
