"""The teacher checked on the user's task before it labels (``cascade task create --examples``).

A few labelled rows of the user's own task (gold examples) are scored by the teacher under a handful of prompt
forms: the label words as given or the label descriptions, the allowed answers named after or before the row, a yes/no
question for two labels (both ways round), each raw and contextually calibrated; then the best of these with a few of
the examples in its prompt (cross-validated: no example is scored by a prompt that holds it). Each frame (instruction,
template, words) is scored once, raw, with the content-free rows of its prompt: the calibrated probabilities follow from
those
(:func:`cascade.llm.prompts.contextual_calibration`, as the scorer computes them), and the yes/no mappings from the
same scores. The form that answers the examples best is kept (ties: the earlier form, the first being task create's
own), and its accuracy is reported with a Clopper-Pearson interval and the confusion per label.

The teacher is unfit for the task when the interval's upper bound is not above the examples' majority-class rate
(always answering the most common label would do as well) or ``min_accuracy``, or when it gives every example the same
label while the examples hold several: then the job stops before the long labelling and says what to do.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cascade.calibrate import clopper_pearson_lower
from cascade.llm.prompts import CONTENT_FREE, PromptTemplate, contextual_calibration
from cascade.tasks import prompt_from_question

YES_NO = ("no", "yes")
#: With more labels than this, the answers are named where task create names them (``place="auto"``) only, and no
#: few-shot form is tried: each extra frame costs a pass over the examples, and long candidate lists are the slowest.
MANY_LABELS = 10
#: Examples needed before few-shot forms are tried (each half lends the other its prompt's examples).
MIN_FEW_SHOT_EXAMPLES = 16


@dataclass(frozen=True)
class Frame:
    """A prompt frame scored once: the words the teacher chooses among, in the order it is asked."""

    name: str
    instruction: str
    template: str
    words: tuple[str, ...]
    #: For each way of reading the words as labels: (name, label index -> index into ``words``).
    readings: tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class Form:
    """A way of asking the teacher: a frame, one reading of its words, raw or calibrated."""

    name: str
    instruction: str
    template: str
    verbalizations: tuple[str, ...]
    calibrate: bool
    few_shot: tuple[tuple[str, int], ...] = ()

    def prompt(self) -> dict:
        """The form as a prompt's JSON form (``cascade.llm.prompts.PromptTemplate``)."""
        template = PromptTemplate(
            self.template, self.verbalizations, self.few_shot, self.instruction, calibrate=self.calibrate
        )
        return template.to_json()


def yes_no_prompt(question: str) -> tuple[str, str]:
    """``(instruction, template)`` of a yes/no question about the row (the ``AI.IF`` form)."""
    if "{text}" in question:
        before, after = question.split("{text}", 1)
        return "", f"{before}{{text}}{after.rstrip()}\nAnswer yes or no.\nAnswer:"
    return question.strip(), "Text: {text}\nAnswer yes or no.\nAnswer:"


def frames(question: str, labels: Sequence[str], descriptions: Sequence[str] | None = None) -> list[Frame]:
    """The frames tried, task create's own first: label names (then descriptions, when given) with the answers named
    after and before the row, and for two labels a yes/no question read both ways round."""
    identity = (("", tuple(range(len(labels)))),)
    word_sets = [("label names", tuple(labels))]
    if descriptions and tuple(descriptions) != tuple(labels):
        word_sets.append(("label descriptions", tuple(descriptions)))
    places = ("auto",) if len(labels) > MANY_LABELS else ("auto", "before", "after")
    out, seen = [], set()
    for what, words in word_sets:
        for place in places:
            instruction, template = prompt_from_question(question, words, place)
            if (instruction, template, words) not in seen:  # "auto" is one of the other two
                seen.add((instruction, template, words))
                out.append(Frame(f"{what}, answers {place if place != 'auto' else 'where task create puts them'}",
                                 instruction, template, words, identity))  # fmt: skip
    if len(labels) == 2:
        instruction, template = yes_no_prompt(question)
        readings = ((f"yes = {labels[1]}", (0, 1)), (f"yes = {labels[0]}", (1, 0)))
        out.append(Frame("yes or no", instruction, template, YES_NO, readings))
    return out


def score_frame(
    teacher_for, frame: Frame, texts: Sequence[str], few_shot: Sequence[tuple[str, int]] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """The frame's raw and calibrated probabilities over its words, ``[n, len(words)]`` each, with these few-shot
    examples in the prompt; ``teacher_for(prompt)`` gives a teacher (``ServerTeacher``) of a prompt's JSON form."""
    template = PromptTemplate(frame.template, frame.words, tuple(few_shot), frame.instruction, calibrate=False)
    teacher = teacher_for(template.to_json())
    probs = np.asarray(teacher.label(None, [*texts, *CONTENT_FREE]), dtype=np.float64)
    raw, prior = probs[: len(texts)], probs[len(texts) :].mean(axis=0)
    return raw, contextual_calibration(raw, prior)


def few_shot_k(n_labels: int) -> int:
    """Few-shot examples in a prompt: two per label for two labels, one per label up to :data:`MANY_LABELS` (a longer
    prompt costs every row), none beyond."""
    return 0 if n_labels > MANY_LABELS else max(4, n_labels)


def few_shot_forms(teacher_for, base: Form, texts: Sequence[str], gold: np.ndarray, k: int, seed: int = 0) -> list:
    """``base`` with ``k`` of the examples in its prompt, raw and calibrated, scored by two-fold cross-validation: each
    half of the examples is answered with examples drawn from the other half in the prompt, so that no example is
    scored by a prompt that holds it. The form kept holds ``k`` examples drawn from all of them."""
    from cascade_export.build.llm_tiers import draw_few_shot

    n, n_labels = len(texts), len(base.verbalizations)
    rng = np.random.default_rng(seed)
    fold = np.empty(n, dtype=np.int64)
    fold[rng.permutation(n)] = np.arange(n) % 2
    frame = Frame(base.name, base.instruction, base.template, base.verbalizations, (("", tuple(range(n_labels))),))
    raw, calibrated = np.zeros((n, n_labels)), np.zeros((n, n_labels))
    for f in (0, 1):
        rows, others = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        shots = draw_few_shot([texts[i] for i in others], gold[others], k, n_labels, rng)
        raw[rows], calibrated[rows] = score_frame(teacher_for, frame, [texts[i] for i in rows], shots)
    shots = tuple(draw_few_shot(list(texts), gold, k, n_labels, rng))
    stem = base.name.removesuffix(", calibrated").removesuffix(", raw")
    out = []
    for calibrate, probs in ((True, calibrated), (False, raw)):
        predicted = probs.argmax(axis=1)
        name = f"{stem}, {k} examples in the prompt, {'calibrated' if calibrate else 'raw'}"
        form = Form(name, base.instruction, base.template, base.verbalizations, calibrate, shots)
        out.append((float((predicted == gold).mean()), form, predicted))
    return out


def interval(correct: int, n: int, delta: float) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval at confidence 1-delta."""
    low = float(clopper_pearson_lower(correct, n, delta / 2))
    high = 1.0 - float(clopper_pearson_lower(n - correct, n, delta / 2))
    return low, high


def check_teacher(
    teacher_for,
    question: str,
    labels: Sequence[str],
    texts: Sequence[str],
    gold: Sequence[int],
    *,
    descriptions: Sequence[str] | None = None,
    delta: float = 0.05,
    min_accuracy: float | None = None,
) -> dict:
    """Every form's accuracy on the examples, the best form (``chosen``: its prompt too), its interval, the confusion
    per label, and the verdict (``fit``, or ``unfit`` with the ``reason``)."""
    gold = np.asarray(gold, dtype=np.int64)
    k = len(labels)
    start = time.perf_counter()
    results = []
    for frame in frames(question, labels, descriptions):
        raw, calibrated = score_frame(teacher_for, frame, texts)
        for calibrate, probs in ((True, calibrated), (False, raw)):
            for reading, order in frame.readings:
                predicted = probs[:, list(order)].argmax(axis=1)
                form = Form(
                    ", ".join(x for x in (frame.name, reading, "calibrated" if calibrate else "raw") if x),
                    frame.instruction, frame.template, tuple(frame.words[i] for i in order), calibrate,
                )  # fmt: skip
                results.append((float((predicted == gold).mean()), form, predicted))
    best = max(range(len(results)), key=lambda i: (results[i][0], -i))
    if few_shot_k(k) and len(gold) >= MIN_FEW_SHOT_EXAMPLES:
        results += few_shot_forms(teacher_for, results[best][1], texts, gold, few_shot_k(k))
        best = max(range(len(results)), key=lambda i: (results[i][0], -i))
    return _report(results, best, gold, labels, delta, min_accuracy, start)


def check_prompt(
    teacher,
    labels: Sequence[str],
    texts: Sequence[str],
    gold: Sequence[int],
    *,
    delta: float = 0.05,
    min_accuracy: float | None = None,
) -> dict:
    """A task's own prompt (``teacher``: a ``ServerTeacher`` of it) checked on the examples: the same report and
    verdict as :func:`check_teacher`, with one form tried."""
    gold = np.asarray(gold, dtype=np.int64)
    start = time.perf_counter()
    predicted = np.asarray(teacher.label(None, list(texts))).argmax(axis=1)
    t = teacher.template
    form = Form("the task's prompt", t.instruction, t.template, t.verbalizations, bool(teacher.calibrate), t.few_shot)
    return _report([(float((predicted == gold).mean()), form, predicted)], 0, gold, labels, delta, min_accuracy, start)


def _report(results: list, best: int, gold: np.ndarray, labels, delta, min_accuracy, start: float) -> dict:
    n, k = len(gold), len(labels)
    counts = np.bincount(gold, minlength=k)
    accuracy, form, predicted = results[best]
    correct = int((predicted == gold).sum())
    low, high = interval(correct, n, delta)
    majority = int(counts.argmax())
    report = {
        "examples": n,
        "label_counts": dict(zip(labels, counts.tolist(), strict=True)),
        "majority_label": labels[majority],
        "majority_rate": float(counts[majority] / n),
        "forms": [{"form": f.name, "accuracy": a} for a, f, _ in results],
        "chosen": {"form": form.name, "prompt": form.prompt()},
        "accuracy": accuracy,
        "interval": [low, high],
        "confidence": 1 - delta,
        "confusion": confusion(gold, predicted, labels),
        "teacher_s": time.perf_counter() - start,
    }
    report["verdict"], report["reason"] = verdict(report, predicted, min_accuracy)
    return report


def confusion(gold: np.ndarray, predicted: np.ndarray, labels: Sequence[str]) -> dict:
    """For each label the examples hold, how many of them the teacher answered with each label (the cells that are
    not zero: a task of many labels has few)."""
    out: dict[str, dict[str, int]] = {}
    for g, p in zip(gold.tolist(), predicted.tolist(), strict=True):
        row = out.setdefault(labels[g], {})
        row[labels[p]] = row.get(labels[p], 0) + 1
    return {labels[g]: dict(sorted(out[labels[g]].items(), key=lambda x: -x[1])) for g in sorted(set(gold.tolist()))}


def confusion_text(table: dict, shown: int = 10) -> str:
    """The confusion in a line: with few labels all of it, else the ``shown`` most frequent wrong answers."""
    if len(table) <= 4:
        return f"confusion (gold -> answered): {table}"
    wrong = sorted(((n, g, p) for g, row in table.items() for p, n in row.items() if p != g), key=lambda x: -x[0])
    pairs = ", ".join(f"{g} -> {p}: {n}" for n, g, p in wrong[:shown])
    return f"most frequent wrong answers (gold -> answered): {pairs or 'none'}"


def verdict(report: dict, predicted: np.ndarray, min_accuracy: float | None) -> tuple[str, str | None]:
    """``fit`` or ``unfit`` and why; examples of one label only cannot tell the teacher from always answering it,
    which is said (a ``fit`` with a reason) rather than held against it."""
    high, majority = report["interval"][1], report["majority_rate"]
    held = sum(1 for c in report["label_counts"].values() if c)
    if held == 1:
        return "fit", (
            f"the examples are all {report['majority_label']!r}, so they cannot tell the teacher from one that always "
            "answers that: give examples of every label"
        )
    if high <= majority:
        return "unfit", (
            f"no better than always answering {report['majority_label']!r} ({majority:.0%} of the examples)"
        )
    if min_accuracy is not None and high < min_accuracy:
        return "unfit", f"below the --min-teacher-accuracy {min_accuracy:.2f} asked for"
    if len(set(predicted.tolist())) == 1:
        return "unfit", "it gives every example the same label"
    return "fit", None


def unfit_message(report: dict, teacher: str) -> str:
    """What a stopped task create says: what was tried, how the best did, and what to do."""
    low, high = report["interval"]
    tried = "; ".join(f"{f['form']}: {f['accuracy']:.0%}" for f in report["forms"])
    alone = report.get("examples_alone")
    alone = (
        ""
        if alone is None
        else (f" Tier 0 trained on your examples alone answers {alone:.0%} of them right (cross-validated).")
    )
    return (
        f"the teacher ({teacher}) cannot do this task on your {report['examples']} examples: its best form "
        f"({report['chosen']['form']}) answers {report['accuracy']:.0%} of them right ({report['confidence']:.0%} "
        f"interval {low:.2f}-{high:.2f}), {report['reason']}. Tried: {tried}.{alone} Nothing was labelled. What to do: "
        "describe the labels (--labels 'ham=an ordinary message,spam=unsolicited advertising'), reword --prompt, "
        "give more examples, or teach with labels you hold (cascade label --teacher column:NAME, then cascade build)"
    )
