"""The user's gold examples (``cascade task create --examples``): read, scored by the served task, weighed as
training labels against the teacher's, and what task create warns of after labelling (:func:`label_warnings`).

Gold examples are labels. :func:`compare_sources` asks, by cross-validation over the examples, which labels train the
better tier 0 (a logistic regression over the embeddings): the teacher's alone, the examples alone, or both (each
example repeated :func:`gold_weight` times beside the teacher's rows). When both beat the teacher's alone, task create
adds the examples to the training rows (:func:`add_examples`: ``labelled.csv`` rows of sample ``gold`` with their
``weight``); they never calibrate, since calibration measures agreement with the teacher on its uniform sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cascade import contract
from cascade.errors import ConfigError
from cascade_export.build.labelled import GOLD, SAMPLE_COLUMN, WEIGHT_COLUMN

#: Gold examples task create needs to check the teacher.
MIN_EXAMPLES = 10
TEACHER, EXAMPLES, BOTH = "teacher labels", "examples alone", "examples and teacher labels"
#: Folds of the comparison (fewer when a label has fewer examples).
FOLDS = 5


def read_examples(path: str | Path, labels: Sequence[str], text_column: str, label_column: str):
    """Gold examples: ``(texts, label indices)`` of a table whose label column names the task's labels."""
    from cascade.datasets import read_rows

    texts, names = read_rows(Path(path), text_column, label_column, labels_as_text=True)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({n for n in names if n not in index})
    if unknown:
        raise ConfigError(f"examples {path}: labels {unknown[:5]} are not among the task's labels {list(labels)}")
    if len(texts) < MIN_EXAMPLES:
        raise ConfigError(f"examples {path}: {len(texts)} rows; give at least {MIN_EXAMPLES} (20-200 is typical)")
    return texts, [index[n] for n in names]


def gold_weight(n_teacher: int, n_gold: int) -> int:
    """How many times each example counts in training beside ``n_teacher`` teacher labels: the examples together
    weigh half as much as the teacher's labels (at least once each)."""
    return max(1, round(n_teacher / (2 * max(n_gold, 1))))


def _folds(y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    smallest = int(np.bincount(y)[np.bincount(y) > 0].min())
    if smallest >= 2:
        return list(StratifiedKFold(min(FOLDS, smallest), shuffle=True, random_state=seed).split(y, y))
    return list(KFold(min(FOLDS, len(y)), shuffle=True, random_state=seed).split(y))


def _fit_predict(x: np.ndarray, y: np.ndarray, x_held: np.ndarray) -> np.ndarray:
    """Tier 0 at its default C, fitted on ``x, y``: its labels for ``x_held`` (a lone label answers itself)."""
    from sklearn.linear_model import LogisticRegression

    from cascade_export.build.tabular import LOGREG_DEFAULT_C

    if len(np.unique(y)) < 2:
        return np.full(len(x_held), int(y[0]))
    return LogisticRegression(C=LOGREG_DEFAULT_C, max_iter=1000).fit(x, y).predict(x_held)


def compare_sources(x_gold, y_gold, x_teacher, y_teacher, seed: int = 0) -> dict:
    """Tier 0's accuracy on the examples, cross-validated over them, trained on each source of labels: the teacher's
    (``x_teacher``, ``y_teacher``: embeddings and labels of its rows), the examples of the other folds, and both (the
    examples weighted by :func:`gold_weight`). ``chosen`` is both where they beat the teacher's alone or hold labels
    the teacher never gave (``labels_only_in_examples``: the cheap tiers have no other rows of them), else the
    teacher's; ``examples_best`` says the examples alone beat both others."""
    x_gold, x_teacher = np.asarray(x_gold, dtype=np.float32), np.asarray(x_teacher, dtype=np.float32)
    y_gold, y_teacher = np.asarray(y_gold, dtype=np.int64), np.asarray(y_teacher, dtype=np.int64)
    folds = _folds(y_gold, seed)
    weight = gold_weight(len(y_teacher), len(y_gold) * (len(folds) - 1) // len(folds))
    both = np.zeros_like(y_gold)
    for train, held in folds:
        x = np.concatenate([x_teacher, np.repeat(x_gold[train], weight, axis=0)])
        y = np.concatenate([y_teacher, np.repeat(y_gold[train], weight)])
        both[held] = _fit_predict(x, y, x_gold[held])
    accuracy = {
        TEACHER: float((_fit_predict(x_teacher, y_teacher, x_gold) == y_gold).mean()),
        EXAMPLES: examples_alone(x_gold, y_gold, seed),  # the same folds
        BOTH: float((both == y_gold).mean()),
    }
    unseen = sorted(set(y_gold.tolist()) - set(y_teacher.tolist()))  # labels the teacher never gave: no row to learn
    return {
        "examples": len(y_gold),
        "teacher_rows": len(y_teacher),
        "folds": len(folds),
        "gold_weight": gold_weight(len(y_teacher), len(y_gold)),
        "accuracy": accuracy,
        "chosen": BOTH if accuracy[BOTH] > accuracy[TEACHER] or unseen else TEACHER,
        "labels_only_in_examples": unseen,
        "examples_best": accuracy[EXAMPLES] > max(accuracy[TEACHER], accuracy[BOTH]),
    }


def examples_alone(x_gold, y_gold, seed: int = 0) -> float:
    """Tier 0 trained on the examples alone: its accuracy on them, cross-validated."""
    y_gold = np.asarray(y_gold, dtype=np.int64)
    x_gold = np.asarray(x_gold, dtype=np.float32)
    predicted = np.zeros_like(y_gold)
    for train, held in _folds(y_gold, seed):
        predicted[held] = _fit_predict(x_gold[train], y_gold[train], x_gold[held])
    return float((predicted == y_gold).mean())


def add_examples(labelled: Path, texts: Sequence[str], labels: Sequence[int], weight: int) -> None:
    """The examples as training rows of ``labelled.csv``: sample ``gold``, ``weight`` each (the teacher's rows 1)."""
    import pandas as pd

    frame = pd.read_csv(labelled, keep_default_na=False)
    frame = frame[frame[SAMPLE_COLUMN] != GOLD] if SAMPLE_COLUMN in frame.columns else frame
    frame[WEIGHT_COLUMN] = 1
    gold = pd.DataFrame(
        {
            "id": [f"example-{i}" for i in range(len(texts))],
            "text": list(texts),
            "label": list(labels),
            SAMPLE_COLUMN: GOLD,
            WEIGHT_COLUMN: weight,
        }
    )
    tmp = labelled.with_suffix(".csv.tmp")
    pd.concat([frame, gold], ignore_index=True).to_csv(tmp, index=False)
    tmp.replace(labelled)


def gold_report(client, task: str, labels: Sequence[str], gold, check: dict, trained: bool) -> dict:
    """The served task and its teacher on the user's examples, side by side: the cascade's accuracy and the tiers
    that answered, and the teacher's (the check's, with the form kept). The examples chose that form, and where
    ``trained`` they also trained the cheap tiers: neither figure is held out."""
    texts, truth = gold
    answers = [p for start in range(0, len(texts), 64) for p in client.classify(task, texts[start : start + 64])]
    index = {label: i for i, label in enumerate(labels)}
    tiers: dict[str, int] = {}
    for p in answers:
        tiers[p.tier_name] = tiers.get(p.tier_name, 0) + 1
    correct = sum(index[p.label] == t for p, t in zip(answers, truth, strict=True))
    return {
        "examples": len(texts),
        "cascade": correct / len(texts),
        "cascade_tiers": tiers,
        "teacher": check["accuracy"],
        "examples_trained": trained,
    }


def embed_rows(repo: str | Path, texts: Sequence[str]) -> np.ndarray:
    """The rows' embeddings under the model repository's embedder (exported there first if it is missing)."""
    from cascade_export.build.repo_embedder import embed, ensure_embedder

    ensure_embedder(Path(repo))
    return embed(Path(repo), list(texts))


def embed_served(client, texts: Sequence[str], batch: int = 64) -> np.ndarray:
    """The rows' embeddings from the running server's embedder (nothing is written to the model repository)."""
    return np.concatenate([client.embed(list(texts[i : i + batch])) for i in range(0, len(texts), batch)])


def weigh_examples(repo: str | Path, labelled: Path, gold, seed: int = 0) -> dict:
    """:func:`compare_sources` on the examples and the teacher's rows of ``labelled.csv``; where both sources win,
    the examples join ``labelled.csv`` as training rows (:func:`add_examples`)."""
    import pandas as pd

    frame = pd.read_csv(labelled, keep_default_na=False)
    if SAMPLE_COLUMN in frame.columns:
        frame = frame[frame[SAMPLE_COLUMN] != GOLD]
    texts, truth = gold
    x = embed_rows(repo, [*texts, *frame["text"].astype(str)])
    report = compare_sources(x[: len(texts)], truth, x[len(texts) :], frame["label"].to_numpy(), seed)
    if report["chosen"] == BOTH:
        add_examples(labelled, texts, truth, report["gold_weight"])
    return report


#: The total variation distance between the teacher's label shares and the examples' past which task create warns.
LABEL_SHARE_GAP = 0.25
#: Labels the warning names (those whose shares differ most).
SHOWN_SHARES = 5


def label_warnings(
    labelled: dict,
    calibration: list[dict],
    labels: Sequence[str],
    gold: Sequence[int] | None,
    training: dict | None = None,
) -> list:
    """What task create says after labelling: the teacher's label shares far from the examples' (by more than
    :data:`LABEL_SHARE_GAP` of total variation), examples that teach tier 0 better alone than with the teacher's
    labels (``training``: :func:`~cascade_export.distill.examples.compare_sources`), and no cheap tier that learned
    the labels well enough to answer."""
    out = []
    if training is not None and training["examples_best"]:
        acc = training["accuracy"]
        out.append(
            f"tier 0 trained on your {training['examples']} examples alone answers {acc[EXAMPLES]:.0%} of them right "
            f"(cross-validated), more than trained on the teacher's labels ({acc[TEACHER]:.0%}) or on both "
            f"({acc[BOTH]:.0%}): the teacher's labels hold the cascade back; label more rows yourself and build from "
            "them (cascade label --teacher column:NAME, then cascade build)"
        )
    counts = np.array([labelled["label_counts"][label] for label in labels], dtype=float)
    if gold is not None and counts.sum():
        ours = np.bincount(np.asarray(gold), minlength=len(labels)) / len(gold)
        gap = 0.5 * float(np.abs(counts / counts.sum() - ours).sum())
        if gap > LABEL_SHARE_GAP:
            theirs = counts / counts.sum()
            worst = np.argsort(-np.round(np.abs(theirs - ours), 6), kind="stable")[
                :SHOWN_SHARES
            ]  # furthest apart first
            shares = ", ".join(f"{labels[j]} {theirs[j]:.0%} vs {ours[j]:.0%}" for j in worst)
            more = f", and {len(labels) - len(worst)} more" if len(labels) > len(worst) else ""
            out.append(
                f"the teacher's labels are far from your examples' shares (total variation {gap:.2f}; teacher vs "
                f"examples: {shares}{more}): check its labels"
            )
    cheap = [c for c in calibration if c["tier"] not in contract.LLM_TIERS]
    if cheap and not any(c["enabled"] for c in cheap):
        best = max(cheap, key=lambda c: c.get("lower_bound") or 0.0)
        name, agreement = contract.TIER_NAMES[best["tier"]], best.get("agreement") or 0.0
        out.append(
            f"no cheap tier learned the teacher's labels well enough to answer (best: {name}, agreement "
            f"{agreement:.2f}): the LLM answers every row; more labels or a clearer question may help"
        )
    return out
