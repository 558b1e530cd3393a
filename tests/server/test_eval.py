"""``cascade eval``: a labelled table through the real server, scored against its label column."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from cascade import contract
from cascade.cli.evaluate import REQUIRED_KEYS, evaluate_table, gold_indices
from cascade.errors import InvalidInput
from cascade.tasks import load_split

FAST_RETRY = (0.1, 0.2)


def cli(cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "cascade.cli.main", "eval", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


@pytest.fixture(scope="module")
def rows(sst2_task):
    texts, gold = load_split(sst2_task, "validation", limit=60)
    return texts, gold


# ------------------------------------------------------------------------------------------ no server
def test_label_column_takes_names_indices_and_names_an_unknown_value():
    labels = ["negative", "positive"]
    column = pa.array(["positive", "negative", "1", " negative ", "0"])
    assert gold_indices(column, labels, "t").tolist() == [1, 0, 1, 0, 0]
    assert gold_indices(pa.chunked_array([pa.array([1, 0]), pa.array([0])]), labels, "t").tolist() == [1, 0, 0]
    with pytest.raises(InvalidInput, match=r"unknown label value\(s\) \['neutral'\]"):
        gold_indices(pa.array(["positive", "neutral"]), labels, "t")
    with pytest.raises(InvalidInput, match=r"unknown label value\(s\) \[2\]"):
        gold_indices(pa.array([0, 2]), labels, "t")
    with pytest.raises(InvalidInput, match="row 1 has no label"):
        gold_indices(pa.array([0, None]), labels, "t")


def test_bad_tables_are_clear_cli_errors_before_any_server(tmp_path):
    pcsv.write_csv(pa.table({"text": ["a fine film"], "label": [1]}), tmp_path / "t.csv")
    pcsv.write_csv(pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.int64())}), tmp_path / "e.csv")
    url = "127.0.0.1:1"  # nothing listens: each error must come before the server is needed
    for args, message in (
        (["--table", "t.csv", "--label-column", "gold"], "no label column 'gold'"),
        (["--table", "nope.csv", "--label-column", "label"], "table nope.csv not found"),
        (["--table", "e.csv", "--label-column", "label"], "table e.csv has no rows"),
        (["--table", "t.csv", "--label-column", "label", "--column", "review"], "no text column 'review'"),
    ):
        run = cli(tmp_path, "sst2", *args, "--url", url)
        assert run.returncode == 2, run.stderr
        assert message in run.stderr and "Traceback" not in run.stderr, run.stderr


# ------------------------------------------------------------------------------------ against a server
@pytest.mark.server
def test_accuracy_and_tiers_match_the_gate_with_names_or_indices(tmp_path, server, client, sst2_task, rows):
    texts, gold = rows
    names = [sst2_task.labels[g] for g in gold]
    # A column named "label" collides with the filter job's result column: eval must cope.
    pcsv.write_csv(pa.table({"text": texts, "label": names}), tmp_path / "named.csv")
    pq.write_table(pa.table({"text": texts, "gold": gold}), tmp_path / "indexed.parquet")

    expected = client.classify(sst2_task.name, texts, max_tier="encoder")
    want_accuracy = float(np.mean([p.label == n for p, n in zip(expected, names, strict=True)]))
    want_tiers: dict[str, int] = {}
    for p in expected:
        want_tiers[p.tier_name] = want_tiers.get(p.tier_name, 0) + 1

    report = evaluate_table(sst2_task.name, tmp_path / "named.csv", "label", server.grpc_url, max_tier="encoder")
    assert set(REQUIRED_KEYS) <= set(report)
    assert report["rows"] == len(texts) and report["errors"] == 0 and report["answered"] == len(texts)
    assert report["accuracy"] == pytest.approx(want_accuracy)
    assert report["tiers"] == dict(sorted(want_tiers.items(), key=lambda kv: contract.TIER_BY_NAME[kv[0]]))
    assert sum(report["tiers"].values()) == report["rows"] and report["llm_share"] == 0.0
    for tier, n in report["tiers"].items():
        hits = [p.label == g for p, g in zip(expected, names, strict=True) if p.tier_name == tier]
        assert len(hits) == n and report["tier_accuracy"][tier] == pytest.approx(np.mean(hits))
    assert report["wall_s"] > 0 and report["rows_per_s"] == pytest.approx(len(texts) / report["wall_s"])

    by_index = evaluate_table(sst2_task.name, tmp_path / "indexed.parquet", "gold", server.grpc_url, max_tier=2)
    assert by_index["accuracy"] == report["accuracy"] and by_index["tiers"] == report["tiers"]


@pytest.mark.server
def test_full_cascade_counts_llm_rows_and_per_row_errors(tmp_path, server, client, sst2_task, rows):
    texts, gold = rows
    texts, gold = texts[:12], gold[:12]
    # Parquet keeps the null text apart; its row gets a per-row error and is counted, not dropped.
    pq.write_table(pa.table({"text": [*texts, None, "  "], "gold": [*gold, 0, 1]}), tmp_path / "t.parquet")
    report = evaluate_table(sst2_task.name, tmp_path / "t.parquet", "gold", server.grpc_url, backoff_s=FAST_RETRY)
    assert report["rows"] == len(texts) + 2 and report["errors"] == 2 and report["answered"] == len(texts)
    assert [e["row"] for e in report["error_examples"]] == [len(texts), len(texts) + 1]
    assert sum(report["tiers"].values()) == report["answered"]
    llm = sum(n for t, n in report["tiers"].items() if t in ("llm_small", "llm_large"))
    assert report["llm_share"] == pytest.approx(llm / report["answered"])
    assert 0.0 <= report["accuracy"] <= 1.0
    assert report["correct"] == pytest.approx(sum(report["tier_accuracy"][t] * n for t, n in report["tiers"].items()))

    above = evaluate_table(sst2_task.name, tmp_path / "t.parquet", "gold", server.grpc_url, min_tier="encoder")
    assert set(above["tiers"]) <= {"encoder", "llm_small", "llm_large"} and above["min_tier"] == "encoder"


@pytest.mark.server
def test_cli_eval_max_tier_json_and_unknown_label(tmp_path, server, sst2_task, rows):
    texts, gold = rows
    pcsv.write_csv(pa.table({"text": texts[:30], "gold": gold[:30]}), tmp_path / "t.csv")
    run = cli(tmp_path, sst2_task.name, "--table", "t.csv", "--label-column", "gold", "--max-tier", "logreg",
              "--json", "r.json", "--url", server.grpc_url)  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    for key in (*REQUIRED_KEYS, "rows_per_s", "tier_accuracy", "task", "table", "label_column", "max_tier", "url"):
        assert key in report
    assert report["rows"] == 30 and report["tiers"] == {"logreg": 30} and report["llm_share"] == 0.0
    assert report["max_tier"] == "logreg" and report["min_tier"] is None
    assert f"accuracy {report['accuracy']:.4f}" in run.stdout and "logreg" in run.stdout

    pcsv.write_csv(pa.table({"text": texts[:3], "gold": ["positive", "neutral", "0"]}), tmp_path / "bad.csv")
    run = cli(tmp_path, sst2_task.name, "--table", "bad.csv", "--label-column", "gold", "--url", server.grpc_url)
    assert run.returncode == 2 and "unknown label value(s) ['neutral']" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    run = cli(tmp_path, sst2_task.name, "--table", "t.csv", "--label-column", "gold", "--max-tier", "bogus",
              "--url", server.grpc_url)  # fmt: skip
    assert run.returncode == 2 and "unknown tier 'bogus'" in run.stderr, run.stderr


@pytest.mark.server
def test_cli_eval_teacher_scores_the_table_with_the_teacher_alone_beside_the_cascade(tmp_path, server, sst2_task, rows):
    texts, gold = rows
    pcsv.write_csv(pa.table({"text": texts[:12], "gold": gold[:12]}), tmp_path / "t.csv")
    run = cli(tmp_path, sst2_task.name, "--table", "t.csv", "--label-column", "gold", "--teacher", "--json", "r.json",
              "--url", server.grpc_url)  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    teacher = report["teacher"]
    assert teacher["answered"] == 12 and teacher["errors"] == 0 and 0.0 <= teacher["accuracy"] <= 1.0
    assert teacher["correct"] == round(teacher["accuracy"] * 12) and teacher["rows_per_s"] > 0
    assert f"side by side: cascade {report['accuracy']:.4f}, teacher alone" in run.stdout
    assert f"{teacher['accuracy']:.4f}" in run.stdout
