"""Distillation step 1 (cascade label): tables, sampling, the label cache, teachers, resume."""

import json

import numpy as np
import pandas as pd
import pytest

from cascade.errors import ConfigError, InvalidInput, ServerError
from cascade.tasks import TaskSpec
from cascade_export.distill.commands import run_label
from cascade_export.distill.label_store import LabelStore
from cascade_export.distill.labelling import SingleClassError, label_sample
from cascade_export.distill.table_rows import read_table, sample_rows
from cascade_export.distill.teachers import ColumnTeacher, connect

LABELS = ("negative", "positive")


def write_table(tmp_path, n=40, fmt="csv", labels=None):
    frame = pd.DataFrame(
        {
            "review": [f"review number {i}" for i in range(n)],
            "gold": labels if labels is not None else [i % 2 for i in range(n)],
            "key": [f"r{i}" for i in range(n)],
        }
    )
    path = tmp_path / f"t.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_read_table(tmp_path, fmt):
    table = read_table(write_table(tmp_path, fmt=fmt), "review", "key")
    assert len(table) == 40 and table.texts[3] == "review number 3" and table.ids[3] == "r3"
    assert read_table(write_table(tmp_path, fmt=fmt), "review").ids[5] == "5"  # row positions


def test_read_table_errors_name_the_problem(tmp_path):
    path = write_table(tmp_path)
    with pytest.raises(ConfigError, match=r"no column 'text' \(columns: \['review', 'gold', 'key'\]\)"):
        read_table(path, "text")
    with pytest.raises(ConfigError, match="not found"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(ConfigError, match="unsupported format"):
        read_table(tmp_path / "t.json")
    pd.DataFrame({"review": ["a", "b"], "key": ["x", "x"]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(ConfigError, match="duplicate ids"):
        read_table(tmp_path / "d.csv", "review", "key")


def test_read_table_reads_gzipped_csv_as_the_table_jobs_do(tmp_path):
    frame = pd.DataFrame({"review": ["a", "two\nlines", "10/10"], "key": ["007", "8", "9"], "gold": [0, 1, 1]})
    frame.to_csv(tmp_path / "t.csv.gz", index=False)
    table = read_table(tmp_path / "t.csv.gz", "review", "key")
    assert table.texts == ["a", "two\nlines", "10/10"] and table.ids == ["007", "8", "9"]  # as written
    assert table.skipped == {} and table.frame.column("gold").to_pylist() == ["0", "1", "1"]  # CSV cells: text


def null_and_empty_table(tmp_path, fmt):
    """Ten rows; row 3's text is null (Parquet) or missing (CSV), row 6's is blank."""
    texts = [f"review number {i}" for i in range(10)]
    texts[3], texts[6] = (None if fmt == "parquet" else ""), "  "
    frame = pd.DataFrame({"review": texts, "gold": [i % 2 for i in range(10)]})
    path = tmp_path / f"holes.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    return path


class Spy:
    """A teacher that records the texts it is sent."""

    def __init__(self, inner):
        self.inner, self.name, self.sent = inner, inner.name, []

    def label(self, positions, texts):
        self.sent += list(texts)
        return self.inner.label(positions, texts)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_rows_without_text_are_skipped_and_never_sent_to_the_teacher(tmp_path, fmt):
    path = null_and_empty_table(tmp_path, fmt)
    table = read_table(path, "review")
    null = "text is null" if fmt == "parquet" else "text is empty"  # CSV has no null text: an empty cell
    assert len(table) == 8 and table.skipped_rows == 2
    assert table.skipped == ({null: 1, "text is empty": 1} if fmt == "parquet" else {"text is empty": 2})
    assert "3" not in table.ids and "6" not in table.ids and table.ids[3] == "4"  # ids: row positions in the file
    spy = Spy(ColumnTeacher(table, "gold", LABELS))
    with LabelStore(tmp_path / "l.sqlite") as store:
        done = label_sample("t", LABELS, table, np.arange(len(table)), spy, store, progress=False)
    assert all(text.strip() for text in spy.sent) and len(spy.sent) == 8
    assert done.labels.tolist() == [int(i) % 2 for i in done.ids]  # each row keeps its own label

    task = TaskSpec(name="reviews", labels=LABELS, tiers=(0,))
    summary = run_label(task, tmp_path / "runs", path, text_column="review", budget=8, teacher="column:gold")
    assert summary["rows_in_table"] == 10 and summary["skipped_rows"] == 2 and summary["labelled_rows"] == 8
    assert summary["skipped"] == table.skipped
    frame = pd.read_csv(tmp_path / "runs" / "reviews" / "labelled.csv", keep_default_na=False)
    assert sorted(frame["id"]) == [0, 1, 2, 4, 5, 7, 8, 9] and (frame["text"].str.strip() != "").all()
    too_many = r"8 rows have text in column 'review' \(2 skipped: .*\), fewer than the budget 9"
    with pytest.raises(ConfigError, match=too_many):
        run_label(task, tmp_path / "runs", path, text_column="review", budget=9, teacher="column:gold")


def test_a_table_without_any_text_labels_nothing(tmp_path):
    pd.DataFrame({"review": ["", " "], "gold": [0, 1]}).to_csv(tmp_path / "blank.csv", index=False)
    table = read_table(tmp_path / "blank.csv", "review")
    assert len(table) == 0 and table.skipped == {"text is empty": 2}
    task = TaskSpec(name="reviews", labels=LABELS, tiers=(0,))
    with pytest.raises(ConfigError, match=r"0 rows have text in column 'review'"):
        run_label(
            task, tmp_path / "runs", tmp_path / "blank.csv", text_column="review", budget=1, teacher="column:gold"
        )


def test_sample_is_uniform_seeded_and_bounded():
    a, b = sample_rows(100, 30, seed=1), sample_rows(100, 30, seed=1)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 30 and a.max() < 100
    assert not np.array_equal(a, sample_rows(100, 30, seed=2))
    assert set(a) < set(sample_rows(100, 60, seed=1))  # a larger budget labels a superset: the cache is reused
    with pytest.raises(ConfigError, match="has 10 rows, fewer than the sample size 11"):
        sample_rows(10, 11)
    with pytest.raises(InvalidInput):
        sample_rows(10, 0)


def test_store_keeps_labels_per_teacher_and_drops_edited_rows(tmp_path):
    with LabelStore(tmp_path / "l.sqlite") as store:
        store.put("t", "column:gold", ["a", "b"], ["x", "y"], [0, 1])
    with LabelStore(tmp_path / "l.sqlite") as store:  # reopened: on disk
        assert store.get("t", "column:gold", ["a", "b"], ["x", "y"]) == {"a": 0, "b": 1}
        assert store.get("t", "llm_large:abc", ["a", "b"], ["x", "y"]) == {}
        assert store.get("t", "column:gold", ["a", "b"], ["x", "edited"]) == {"a": 0}


def test_column_teacher_reads_indices_and_names(tmp_path):
    table = read_table(write_table(tmp_path, n=4, labels=["positive", 0, "1", "negative"]), "review")
    assert ColumnTeacher(table, "gold", LABELS).label(np.arange(4), table.texts).tolist() == [1, 0, 1, 0]
    bad = read_table(write_table(tmp_path, n=3, labels=["positive", "neutral", 7]), "review")
    with pytest.raises(ConfigError, match=r"2 value\(s\) outside the task's labels"):
        ColumnTeacher(bad, "gold", LABELS).label(np.arange(3), bad.texts)
    with pytest.raises(ConfigError, match="no label column 'stars'"):
        ColumnTeacher(table, "stars", LABELS)


class Interrupted(Exception):
    pass


class StopsAfter:
    """A real column teacher that is interrupted (like Ctrl-C) after ``batches`` calls."""

    def __init__(self, inner, batches):
        self.inner, self.left, self.name, self.rows = inner, batches, inner.name, 0

    def label(self, positions, texts):
        if self.left == 0:
            raise Interrupted
        self.left -= 1
        self.rows += len(positions)
        return self.inner.label(positions, texts)


def test_an_interrupted_run_resumes_from_the_cache(tmp_path):
    table = read_table(write_table(tmp_path, n=40), "review")
    positions = sample_rows(len(table), 30, seed=0)
    gold = ColumnTeacher(table, "gold", LABELS)
    with LabelStore(tmp_path / "l.sqlite") as store:
        with pytest.raises(Interrupted):
            label_sample("t", LABELS, table, positions, StopsAfter(gold, 2), store, batch=8, progress=False)
        again = StopsAfter(gold, 99)
        done = label_sample("t", LABELS, table, positions, again, store, batch=8, progress=False)
    assert done.cached_rows == 16 and again.rows == 14  # two batches of 8 survived the interruption
    assert done.labels.tolist() == [p % 2 for p in positions]


def test_a_single_class_sample_keeps_the_task_on_the_llm(tmp_path):
    table = read_table(write_table(tmp_path, n=20, labels=[1] * 20), "review")
    with LabelStore(tmp_path / "l.sqlite") as store, pytest.raises(SingleClassError, match="keep this task on the LLM"):
        label_sample("t", LABELS, table, np.arange(20), ColumnTeacher(table, "gold", LABELS), store, progress=False)


def test_run_label_with_a_label_column(tmp_path):
    task = TaskSpec(name="reviews", labels=LABELS, tiers=(0,))
    path = write_table(tmp_path, n=50)
    summary = run_label(
        task, tmp_path / "runs", path, text_column="review", sample=20, teacher="column:gold", progress=False
    )
    assert summary["labelled_rows"] == 20 and summary["cached_rows"] == 0
    frame = pd.read_csv(tmp_path / "runs" / "reviews" / "labelled.csv")
    assert len(frame) == 20 and set(frame.columns) == {"id", "text", "label", "sample"}
    assert (frame["sample"] == "uniform").all()  # the default strategy
    assert (frame["label"] == frame["id"] % 2).all()
    assert json.loads((tmp_path / "runs" / "reviews" / "labels.json").read_text())["sample"] == 20
    again = run_label(
        task, tmp_path / "runs", path, text_column="review", sample=20, teacher="column:gold", progress=False
    )
    assert again["cached_rows"] == 20 and again["labelled_rows"] == 0
    with pytest.raises(InvalidInput, match="unknown teacher"):
        run_label(task, tmp_path / "runs", path, text_column="review", sample=5, teacher="oracle", progress=False)


def test_the_teacher_keeps_one_request_per_llm_instance_in_flight():
    """A labelling batch is split across the scorer's instances, sent together, and reassembled in order."""
    import threading
    import time

    from cascade import contract
    from cascade_export.distill.teachers import ServerTeacher

    class Client:
        def __init__(self):
            self.in_flight = self.most = 0
            self.lock = threading.Lock()

        def score(self, model, prompts, candidates, calibrate):
            with self.lock:
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
            time.sleep(0.2)
            with self.lock:
                self.in_flight -= 1
            # label 1 for rows whose text has an even number, so the order can be checked
            probs = np.array([[0.0, 1.0] if int(p.content) % 2 == 0 else [1.0, 0.0] for p in prompts])
            return probs, np.zeros(len(prompts), bool)

        def model_parameters(self, model):
            return {contract.CFG_LLM_MODEL: "some-model"}

    client = Client()
    prompt = {"template": "Review: {text}\nSentiment:", "verbalizations": ["negative", "positive"]}
    teacher = ServerTeacher(client, prompt)
    texts = [str(i) for i in range(11)]
    probs = teacher.label(np.arange(11), texts)  # the probabilities: the label is their argmax
    assert probs.argmax(axis=1).tolist() == [1 - i % 2 for i in range(11)]
    assert teacher.name.startswith("llm_large:some-model:")  # the served model is part of the teacher's identity
    assert client.most == contract.LLM_INSTANCES


def test_an_unreachable_server_is_a_clear_error():
    with pytest.raises(ServerError, match="no ready Triton server at 127.0.0.1:9"):
        connect("127.0.0.1:9", timeout_s=2)


def test_a_cache_from_before_soft_labels_is_read_and_extended(tmp_path):
    import sqlite3

    from cascade_export.distill.label_store import LabelStore, _text_hash

    path = tmp_path / "labels.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE labels (task TEXT, teacher TEXT, row_id TEXT, text_hash TEXT, label INTEGER, "
        "PRIMARY KEY (task, teacher, row_id))"
    )
    db.execute("INSERT INTO labels VALUES ('t', 'x', '0', ?, 1)", (_text_hash("old row"),))
    db.commit()
    db.close()
    with LabelStore(path) as store:
        assert store.get("t", "x", ["0"], ["old row"]) == {"0": 1}
        assert store.get_probs("t", "x", ["0"], ["old row"]) == {}  # it has a label, no probabilities
        store.put("t", "x", ["1"], ["new row"], [0], np.array([[0.75, 0.25]]))
        assert store.get_probs("t", "x", ["0", "1"], ["old row", "new row"]) == {"1": [0.75, 0.25]}


def test_soft_labels_are_read_with_one_hot_rows_where_the_teacher_gave_none(tmp_path):
    from cascade_export.build.labels_file import read_soft_labels

    path = tmp_path / "labelled.csv"
    pd.DataFrame(
        {"text": ["a", "b", "c"], "label": [0, 1, 1], "prob_0": [0.8, None, 0.4], "prob_1": [0.2, None, 0.6]}
    ).to_csv(path, index=False)
    probs = read_soft_labels(path, np.array([0, 1, 1]), 2)
    assert np.allclose(probs, [[0.8, 0.2], [0.0, 1.0], [0.4, 0.6]])
    pd.DataFrame({"text": ["a"], "label": [0]}).to_csv(path, index=False)
    assert read_soft_labels(path, np.array([0]), 2) is None


def _open_store(path, start, outcomes):
    from cascade_export.distill.label_store import LabelStore

    start.wait()
    try:
        with LabelStore(path):
            outcomes.put(None)
    except Exception as exc:  # noqa: BLE001 - the test reports any failure
        outcomes.put(repr(exc))


def test_processes_may_open_one_cache_at_once(tmp_path):
    """The CI failure of 852e426: a reader and the labelling job each saw no `probs` column in a cache and both
    added it ("duplicate column name: probs"). Six processes open an old cache at once, ten times: none fails.
    (Before the fix this failed in about half the openings.)"""
    import multiprocessing
    import sqlite3

    ctx = multiprocessing.get_context("fork")
    failures = []
    for attempt in range(10):
        path = tmp_path / f"labels-{attempt}.sqlite"
        db = sqlite3.connect(path)
        db.execute(
            "CREATE TABLE labels (task TEXT, teacher TEXT, row_id TEXT, text_hash TEXT, label INTEGER, "
            "PRIMARY KEY (task, teacher, row_id))"
        )
        db.commit()
        db.close()
        start, outcomes = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open_store, args=(path, start, outcomes)) for _ in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=60)
        failures += [outcome for outcome in (outcomes.get(timeout=10) for _ in procs) if outcome is not None]
    assert failures == []


class ProbTeacher:
    """Probabilities at float32's full precision, as the LLM tier answers them."""

    name = "llm:probs"

    def label(self, positions, texts):
        p = np.random.default_rng(int(positions[0])).dirichlet([1, 1], size=len(positions)).astype(np.float32)
        return p


def test_soft_labels_are_the_same_fresh_or_from_the_cache(tmp_path):
    # A build is sensitive to the last digits of its soft labels (the calibrated cut moves), so the labels a run
    # gets from the teacher and those a rerun reads back from the cache must be the same numbers.
    table = read_table(write_table(tmp_path, n=30), "review")
    positions = np.arange(30)
    with LabelStore(tmp_path / "l.sqlite") as store:
        fresh = label_sample("t", LABELS, table, positions, ProbTeacher(), store, batch=8, progress=False)
        again = label_sample("t", LABELS, table, positions, ProbTeacher(), store, batch=8, progress=False)
    assert fresh.cached_rows == 0 and again.cached_rows == 30
    assert fresh.probs.tobytes() == again.probs.tobytes()
    raw = ProbTeacher().label(positions[:8], table.texts[:8])
    assert np.abs(fresh.probs[:8] - raw).max() <= 5e-7 and (fresh.probs[:8] != raw).any()  # rounded, not replaced
