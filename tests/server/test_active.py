"""Active sampling of the teacher's labels (cascade label --budget N --strategy active): the budget is spent
exactly, the active rows are the ones tier 0 is least sure of, a rerun labels nothing new, and calibration
draws only on the uniform rows.

The embedder is the test repository's (``CASCADE_TEST_REPO``, e.g. /tmp/testrepo2/cpu), else one exported into
a temporary repository."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade.errors import ConfigError, InvalidInput
from cascade.tasks import TaskSpec
from cascade_export.distill.active import ACTIVE_POOL_FACTOR, active_sizes, label_active
from cascade_export.distill.commands import run_label
from cascade_export.distill.label_store import LabelStore
from cascade_export.distill.table_rows import read_table
from cascade_export.distill.teachers import ColumnTeacher

LABELS = ("negative", "positive")
TASK = TaskSpec(name="reviews", labels=LABELS, tiers=(0,), target=0.8)
ROWS, BUDGET = 1500, 260  # a seed of 200 uniform rows, 60 active ones chosen among a pool of 20 x 60


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from cascade_export.build.repo_embedder import ensure_embedder

    reuse = os.environ.get("CASCADE_TEST_REPO")
    repo = Path(reuse) if reuse else tmp_path_factory.mktemp("repository") / "cpu"
    ensure_embedder(repo, None if reuse else "minilm-l6")  # the small embedder for a new repository: quick
    return repo


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    from cascade.tasks import load_split, load_task

    texts, gold = load_split(load_task("sst2"), "train", limit=ROWS)
    path = tmp_path_factory.mktemp("table") / "t.csv"
    pd.DataFrame({"sentence": texts, "stars": [LABELS[g] for g in gold]}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def active_run(tmp_path_factory, table_file, repo):
    work = tmp_path_factory.mktemp("runs")
    summary = run_label(
        TASK,
        work,
        table_file,
        text_column="sentence",
        budget=BUDGET,
        strategy="active",
        repo=repo,
        teacher="column:stars",
        progress=False,
    )
    return work, summary


def labelled_of(work):
    return pd.read_csv(work / TASK.name / "labelled.csv", keep_default_na=False)


def test_active_sizes():
    assert active_sizes(1000) == (500, 500)
    assert active_sizes(1001) == (501, 500)
    assert active_sizes(300) == (200, 100)  # the seed is at least 200 rows
    assert active_sizes(150) == (150, 0)  # a small budget is all seed


def test_the_budget_is_spent_exactly(active_run):
    work, summary = active_run
    frame = labelled_of(work)
    assert len(frame) == BUDGET and frame["id"].is_unique
    assert summary["labelled_rows"] == BUDGET and summary["cached_rows"] == 0
    assert (frame["sample"] == "uniform").sum() == 200 and (frame["sample"] == "active").sum() == 60
    with LabelStore(work / TASK.name / "labels.sqlite") as store:
        assert store.count(TASK.name) == BUDGET  # the teacher was asked for BUDGET rows, no more
    saved = json.loads((work / TASK.name / "labels.json").read_text())
    assert saved["budget"] == saved["sample"] == BUDGET and saved["strategy"] == "active"
    assert saved["uniform_rows"] == 200 and saved["active_rows"] == 60
    assert saved["active"]["pool_rows"] == ACTIVE_POOL_FACTOR * 60  # bounded: the table has 1300 other rows


def test_active_rows_are_the_ones_tier0_is_least_sure_of(active_run, table_file, repo):
    from cascade_export.build.repo_embedder import embed
    from cascade_export.build.tabular import train_logreg

    work, summary = active_run
    frame = labelled_of(work)
    table = read_table(table_file, "sentence")
    gold = ColumnTeacher(table, "stars", LABELS).label(frame["id"].to_numpy(), frame["text"].tolist())
    assert (frame["label"].to_numpy() == gold).all()  # labels are the teacher's, row for row
    uniform = (frame["sample"] == "uniform").to_numpy()
    emb = embed(repo, frame["text"].tolist())
    model = train_logreg(emb[uniform], frame["label"].to_numpy()[uniform])
    top = model.predict_proba(emb).max(axis=1)
    unlabelled = np.setdiff1d(np.arange(ROWS), frame["id"].to_numpy())[:300]
    top_other = model.predict_proba(embed(repo, [table.texts[i] for i in unlabelled])).max(axis=1)
    assert top[~uniform].mean() < top[uniform].mean() - 0.05
    assert top[~uniform].mean() < top_other.mean() - 0.05  # than unlabelled rows of the table, too
    assert summary["active"]["active_mean_top_prob"] < summary["active"]["pool_mean_top_prob"]


def test_a_rerun_labels_nothing_new(active_run, table_file, repo):
    work, _ = active_run
    before = labelled_of(work)
    again = run_label(
        TASK,
        work,
        table_file,
        text_column="sentence",
        budget=BUDGET,
        strategy="active",
        repo=repo,
        teacher="column:stars",
        progress=False,
    )
    assert again["labelled_rows"] == 0 and again["cached_rows"] == BUDGET
    assert labelled_of(work).equals(before)


class Interrupted(Exception):
    pass


class Counting:
    """A real column teacher that counts the rows it is asked for and is interrupted after ``batches`` calls."""

    def __init__(self, inner, batches=10**9):
        self.inner, self.left, self.name, self.rows = inner, batches, inner.name, 0

    def label(self, positions, texts):
        if self.left == 0:
            raise Interrupted
        self.left -= 1
        self.rows += len(positions)
        return self.inner.label(positions, texts)


def test_an_interrupted_active_run_resumes(tmp_path, table_file, repo):
    """Interrupted midway through the active rows: the rerun takes the seed and the first active batch from the
    cache, picks the same active rows, and asks the teacher only for those still missing."""
    from cascade_export.build.repo_embedder import embed

    table = read_table(table_file, "sentence")
    gold = ColumnTeacher(table, "stars", LABELS)
    budget, batch = 220, 8  # seed 200 (25 batches), 20 active rows (batches of 8, 8, 4)

    def run(teacher):
        with LabelStore(tmp_path / "l.sqlite") as store:
            return label_active(
                TASK.name, LABELS, table, teacher, store, budget, 0, lambda t: embed(repo, t), False, batch
            )

    first = Counting(gold, batches=26)
    with pytest.raises(Interrupted):
        run(first)
    assert first.rows == 208
    second = Counting(gold)
    done, info = run(second)
    assert second.rows == 12 and done.cached_rows == 208 and len(done.ids) == budget
    assert done.kinds == ["uniform"] * 200 + ["active"] * 20 and info["pool_rows"] == 20 * ACTIVE_POOL_FACTOR
    third = Counting(gold)
    again, _ = run(third)
    assert third.rows == 0 and again.ids == done.ids


def test_calibration_uses_only_uniform_rows(active_run, repo, tmp_path):
    from cascade_export.build.stage import CALIB_FILE, BuildOptions
    from cascade_export.build.train import train_task

    work, _ = active_run
    frame = labelled_of(work)
    uniform_texts = set(frame.loc[frame["sample"] == "uniform", "text"])
    labels_file = str(work / TASK.name / "labelled.csv")
    for fraction, calib_rows in ((0.3, 78), (0.9, 200)):  # 0.9 of 260 > the 200 uniform rows: all of them
        stage = tmp_path / f"stage{fraction}"
        options = BuildOptions(labels_file=labels_file, calib_fraction=fraction, progress=False, keep_all_tiers=True)
        state = train_task(TASK, repo, stage, options)
        held = np.load(stage / CALIB_FILE, allow_pickle=True)["texts"].tolist()
        assert state["calib_rows"] == len(held) == calib_rows and state["train_rows"] == BUDGET - calib_rows
        assert set(held) <= uniform_texts  # no active row calibrates; they all train


def test_old_labelled_files_are_all_uniform(tmp_path):
    from cascade_export.build.labels_file import uniform_rows

    pd.DataFrame({"id": [0, 1], "text": ["a", "b"], "label": [0, 1]}).to_csv(tmp_path / "old.csv", index=False)
    assert uniform_rows(tmp_path / "old.csv").tolist() == [True, True]
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1], "sample": ["uniform", "x"]}).to_csv(tmp_path / "bad.csv")
    with pytest.raises(ConfigError, match="'sample' must hold 'uniform', 'active' or 'gold'"):
        uniform_rows(tmp_path / "bad.csv")


def test_small_budgets_bad_strategies_and_the_cli_flags(tmp_path):
    from cascade.cli.main import build_parser

    pd.DataFrame({"review": [f"review {i}" for i in range(40)], "gold": [i % 2 for i in range(40)]}).to_csv(
        tmp_path / "t.csv", index=False
    )
    common = dict(text_column="review", teacher="column:gold", progress=False)
    # a budget under the seed's minimum is all uniform: nothing embedded (this repository has no embedder)
    small = run_label(
        TASK, tmp_path / "runs", tmp_path / "t.csv", budget=30, strategy="active", repo=tmp_path, **common
    )
    assert small["uniform_rows"] == 30 and small["active_rows"] == 0 and small["active"]["pool_rows"] == 0
    with pytest.raises(InvalidInput, match="unknown sampling strategy"):
        run_label(TASK, tmp_path / "runs", tmp_path / "t.csv", budget=10, strategy="clever", **common)
    with pytest.raises(ConfigError, match="give the model repository"):
        run_label(TASK, tmp_path / "runs", tmp_path / "t.csv", budget=10, strategy="active", **common)
    with pytest.raises(ConfigError, match="fewer than the sample size 41"):
        run_label(TASK, tmp_path / "runs", tmp_path / "t.csv", budget=41, strategy="active", repo=tmp_path, **common)
    assert run_label(TASK, tmp_path / "runs", tmp_path / "t.csv", sample=12, **common)["budget"] == 12  # old name
    parser = build_parser()
    args = parser.parse_args(["label", "--sample", "7"])
    assert args.budget == 7 and args.strategy == "uniform"
    args = parser.parse_args(["label", "--budget", "9", "--strategy", "active", "--repo", "r"])
    assert args.budget == 9 and args.strategy == "active" and args.repo == Path("r")
    create = ["task", "create", "t", "--table", "x.csv", "--prompt", "?", "--labels", "a,b"]
    args = parser.parse_args([*create, "--budget", "500", "--strategy", "active"])
    assert args.budget == 500 and args.strategy == "active"
