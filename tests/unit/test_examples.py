"""The user's examples as training labels: which labels teach tier 0 best under cross-validation, the examples as
weighted training rows of labelled.csv, and the terminal's confirmation of the teacher's first labels."""

import numpy as np
import pandas as pd
import pytest

from cascade.errors import ConfigError, InvalidInput
from cascade_export.build.labelled import GOLD, SAMPLE_COLUMN, UNIFORM, WEIGHT_COLUMN
from cascade_export.distill.examples import (
    BOTH,
    EXAMPLES,
    TEACHER,
    add_examples,
    compare_sources,
    examples_alone,
    gold_weight,
)


def blobs(n: int, seed: int, labels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Separable points: label j around a centre of its own."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % labels
    centres = np.eye(labels, 8) * 4.0
    return (centres[y] + rng.normal(size=(n, 8))).astype(np.float32), y


def test_examples_beside_noisy_teacher_labels_win_and_clean_ones_keep_the_teacher():
    x_gold, y_gold = blobs(60, 0)
    x_teacher, y_true = blobs(900, 1)
    rng = np.random.default_rng(2)
    noisy = np.where(rng.random(900) < 0.5, (y_true + 1) % 3, y_true)  # a teacher that is wrong on half the rows
    report = compare_sources(x_gold, y_gold, x_teacher, noisy)
    acc = report["accuracy"]
    assert acc[EXAMPLES] > 0.9 and acc[BOTH] > acc[TEACHER] and report["chosen"] == BOTH
    assert report["folds"] == 5 and report["gold_weight"] == gold_weight(900, 60) == 8
    clean = compare_sources(x_gold, y_gold, x_teacher, y_true)
    assert clean["accuracy"][TEACHER] >= clean["accuracy"][BOTH] and clean["chosen"] == TEACHER
    assert not clean["examples_best"]
    assert examples_alone(x_gold, y_gold) == pytest.approx(acc[EXAMPLES])


def test_a_teacher_that_swaps_the_labels_is_beaten_by_the_examples_alone():
    x_gold, y_gold = blobs(40, 0, labels=2)
    x_teacher, y_true = blobs(400, 1, labels=2)
    report = compare_sources(x_gold, y_gold, x_teacher, 1 - y_true)
    assert report["accuracy"][TEACHER] < 0.2 and report["examples_best"]
    one_per_label = compare_sources(x_gold[:3], np.array([0, 1, 0]), x_teacher, y_true)  # too few to stratify
    assert one_per_label["folds"] == 3


def test_the_examples_join_labelled_csv_as_weighted_training_rows(tmp_path):
    from cascade_export.build.labels_file import row_weights, uniform_rows

    path = tmp_path / "labelled.csv"
    pd.DataFrame({"id": [1, 2, 3], "text": ["a", "b", "c"], "label": [0, 1, 0], SAMPLE_COLUMN: UNIFORM}).to_csv(
        path, index=False
    )
    assert row_weights(path).tolist() == [1, 1, 1]
    add_examples(path, ["gold a", "gold b"], [1, 0], weight=7)
    add_examples(path, ["gold a", "gold b"], [1, 0], weight=7)  # again (a rerun): not twice
    frame = pd.read_csv(path)
    assert frame[SAMPLE_COLUMN].tolist() == [UNIFORM] * 3 + [GOLD] * 2
    assert row_weights(path).tolist() == [1, 1, 1, 7, 7] and frame[WEIGHT_COLUMN].dtype.kind == "i"
    assert uniform_rows(path).tolist() == [True] * 3 + [False] * 2  # the examples never calibrate
    frame[WEIGHT_COLUMN] = frame[WEIGHT_COLUMN].astype(float)
    frame.loc[0, WEIGHT_COLUMN] = 0.5
    frame.to_csv(path, index=False)
    with pytest.raises(ConfigError, match="whole numbers >= 1"):
        row_weights(path)


def test_corrections_to_the_teachers_first_labels():
    from cascade.cli.confirm import confirm_rows, parse_corrections

    labels = ["ham", "spam"]
    assert parse_corrections("", 20, labels) == {}
    assert parse_corrections("3=spam, 7 = 1,", 20, labels) == {2: 1, 6: 0}
    for bad, why in (("3", "ROW=LABEL"), ("21=spam", "1-20"), ("2=eggs", "neither a label")):
        with pytest.raises(InvalidInput, match=why):
            parse_corrections(bad, 20, labels)
    answers, said = iter(["2=eggs", "2=ham"]), []
    confirmed = confirm_rows(["free prize  now " * 20, "see you at 5"], [1, 1], labels, lambda _: next(answers),
                             said.append)  # fmt: skip
    assert confirmed == [1, 0]
    assert any(line.startswith("  1. [spam] free prize now") and line.endswith("...") for line in said)
    assert any("not understood" in line for line in said) and "1 label(s) corrected" in said[-1]


def test_labels_the_teacher_never_gave_are_learnt_from_the_examples():
    x_gold, y_gold = blobs(30, 0)
    x_teacher, y_true = blobs(300, 1)
    never_two = np.where(y_true == 2, 0, y_true)  # the teacher never answers label 2
    report = compare_sources(x_gold, y_gold, x_teacher, never_two)
    assert report["labels_only_in_examples"] == [2] and report["chosen"] == BOTH


def test_build_takes_examples_only_beside_teacher_labels(tmp_path):
    from cascade.cli.main import main

    pd.DataFrame({"text": [f"t{i}" for i in range(12)], "label": ["negative", "positive"] * 6}).to_csv(
        tmp_path / "gold.csv", index=False
    )
    assert main(["build", "--task", "sst2", "--repo", str(tmp_path / "repo"), "--examples", str(tmp_path / "gold.csv"),
                 "--no-save"]) == 2  # fmt: skip
    assert not (tmp_path / "repo").exists()
