"""The table jobs (``cascade filter``, ``embed``, ``make-table``) against the real server over gRPC, and a resume
after the server is killed mid-job."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cascade import contract, embedders
from cascade.errors import ConfigError, InvalidInput, ServerUnavailable
from cascade.tables.cells import embedding_cells
from cascade.tables.embed_jobs import run_embed
from cascade.tables.job import FilterOptions
from cascade.tables.local import run_filter
from cascade.tasks import load_split

DIM = contract.EMBEDDING_DIM
FAST_RETRY = (0.1, 0.2)


# ------------------------------------------------------------------------------------ against a server
@pytest.fixture(scope="module")
def rows(sst2_task):
    texts, gold = load_split(sst2_task, "validation", limit=150)
    return texts, gold


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, server, rows):
    """The validation rows plus a null and a blank text, embedded by the server."""
    texts, gold = rows
    folder = tmp_path_factory.mktemp("table")
    table = folder / "rows.parquet"  # Parquet keeps a null apart from an empty string (CSV does not)
    pq.write_table(pa.table({"text": [*texts, None, "   "], "gold": [*gold, 0, 0]}), table)
    out = folder / "rows_emb.parquet"
    summary = run_embed(table, out, server.grpc_url, chunk_rows=64, quiet=True)
    assert summary.rows == len(texts) + 2 and summary.error_rows == 2
    return out


@pytest.mark.server
def test_embed_adds_the_servers_embedding(embedded, client, rows):
    texts, _ = rows
    table = pq.read_table(embedded)
    # Parquet cannot hold a null fixed-size list: with rows missing, the column is a variable-size list.
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    # The column records the embedder that made it, as the server names it.
    assert table.schema.field("embedding").metadata[embedders.TABLE_METADATA_KEY] == client.embedder()[0].encode()
    assert client.embedder()[1] == DIM
    emb, has, _ = embedding_cells(table.column("embedding"))
    assert has.tolist() == [True] * len(texts) + [False, False]  # the null and the blank row have none
    direct = client.embed(texts[:20])
    assert np.allclose(emb[:20], direct, atol=1e-5)


@pytest.mark.server
def test_filter_with_embeddings_sends_no_text_and_matches_the_gate(embedded, tmp_path, server, client, sst2_task, rows):
    texts, _ = rows
    out = tmp_path / "out.parquet"
    options = FilterOptions(task=sst2_task.name, max_tier="logreg", prefix="ai_", chunk_rows=50, batch_rows=32)
    summary = run_filter(embedded, out, options, server.grpc_url, llm_probe_rows=0, quiet=True)
    result = pq.read_table(out)
    assert result.num_rows == len(texts) + 2 and "embedding" not in result.column_names
    assert summary.tiers == {"logreg": len(texts)} and summary.error_rows == 2
    expected = client.classify(sst2_task.name, texts, max_tier=contract.TIER_LOGREG)
    assert result.column("ai_label").to_pylist()[: len(texts)] == [p.label for p in expected]
    assert np.allclose(result.column("ai_confidence").to_numpy()[: len(texts)], [p.confidence for p in expected])
    # The null/blank rows had no embedding, so their text was needed, and they are reported, not fatal.
    assert result.column("ai_error").to_pylist()[-2:] == ["text is null", "text is empty"]
    import pyarrow.csv as pcsv

    assert pcsv.read_csv(summary.errors_file).column("row").to_pylist() == [len(texts), len(texts) + 1]


@pytest.mark.server
def test_filter_from_text_where_keeps_matching_rows(tmp_path, server, client, sst2_task, rows):
    texts, _ = rows
    table = tmp_path / "t.csv"
    import pyarrow.csv as pcsv

    pcsv.write_csv(pa.table({"text": texts[:40], "id": list(range(40))}), table)
    out = tmp_path / "positive.csv"
    options = FilterOptions(task=sst2_task.name, where="positive", max_tier="encoder", chunk_rows=16)
    summary = run_filter(table, out, options, server.grpc_url, llm_probe_rows=0, quiet=True)
    kept = pcsv.read_csv(out)
    expected = client.classify(sst2_task.name, texts[:40], max_tier=contract.TIER_ENCODER)
    assert kept.column("id").to_pylist() == [i for i, p in enumerate(expected) if p.label == "positive"]
    assert summary.matching_rows == kept.num_rows and summary.rows == 40
    assert set(kept.column("label").to_pylist()) == {"positive"}
    assert not (tmp_path / "positive.csv.parts").exists()


@pytest.mark.server
def test_filter_flags_best_effort_rows_and_can_retry_them(tmp_path, explicit_server, sst2_task, rows):
    """llm_large unloaded: rows meant for it carry llm_small's answer, flagged in the ``degraded`` column and
    counted; ``on_degraded=retry`` sends them again before keeping that answer; rows no tier could score get a
    per-row error and the job still finishes."""
    texts, _ = rows
    table = tmp_path / "t.csv"
    import pyarrow.csv as pcsv

    pcsv.write_csv(pa.table({"text": texts[:24]}), table)
    from cascade_client import CascadeClient

    large = contract.TIER_NAMES[contract.TIER_LLM_LARGE]
    with CascadeClient(explicit_server.grpc_url) as admin:
        threshold = admin.task_info(sst2_task.name).thresholds[contract.TIER_LLM_SMALL]
        admin._client.unload_model(large)
        try:
            keep = run_filter(
                table, tmp_path / "keep.csv", FilterOptions(task=sst2_task.name, min_tier="llm_small"),
                explicit_server.grpc_url, llm_probe_rows=0, quiet=True,
            )  # fmt: skip
            out = pcsv.read_csv(tmp_path / "keep.csv")
            degraded = out.column("degraded").to_pylist()
            confident = [c >= threshold for c in out.column("confidence").to_pylist()]
            assert degraded == [not c for c in confident] and any(degraded)
            assert set(out.column("tier").to_pylist()) == {contract.TIER_LLM_SMALL}
            assert keep.degraded_rows == sum(degraded) and keep.degraded_retried == 0 and keep.error_rows == 0
            retry = run_filter(
                table, tmp_path / "retry.csv",
                FilterOptions(task=sst2_task.name, min_tier="llm_small", on_degraded="retry", degraded_retries=1),
                explicit_server.grpc_url, backoff_s=FAST_RETRY, llm_probe_rows=0, quiet=True,
            )  # fmt: skip
            assert retry.degraded_retried == sum(degraded) and retry.degraded_rows == sum(degraded)
            lost = run_filter(
                table, tmp_path / "lost.csv", FilterOptions(task=sst2_task.name, min_tier="llm_large"),
                explicit_server.grpc_url, backoff_s=FAST_RETRY, llm_probe_rows=0, quiet=True,
            )  # fmt: skip
            assert lost.error_rows == 24 and lost.rows == 24  # no tier scored them: errors, not a stopped job
            assert "unanswered" in pcsv.read_csv(tmp_path / "lost.csv").column("error").to_pylist()[0]
        finally:
            admin.load_models([large])


@pytest.mark.server
def test_filter_refuses_bad_arguments_before_sending(tmp_path, server, sst2_task, embedded):
    table = tmp_path / "t.csv"
    table.write_text("body\nhello\n")
    url = server.grpc_url
    with pytest.raises(ConfigError, match="no text column 'text'.*body"):
        run_filter(table, tmp_path / "o.csv", FilterOptions(task=sst2_task.name), url, quiet=True)
    with pytest.raises(ConfigError, match="'maybe' is not a label"):
        run_filter(embedded, tmp_path / "o.csv", FilterOptions(task=sst2_task.name, where="maybe"), url, quiet=True)
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("text,label\nhello,1\n")
    with pytest.raises(ConfigError, match=r"already has column\(s\) \['label'\].*--prefix"):
        run_filter(labelled, tmp_path / "o.csv", FilterOptions(task=sst2_task.name), url, quiet=True)
    with pytest.raises(InvalidInput, match="unknown tier"):
        run_filter(embedded, tmp_path / "o.csv", FilterOptions(task=sst2_task.name, max_tier="gpt"), url, quiet=True)
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"text": ["a"], "embedding": pa.array([[0.0] * 8], pa.list_(pa.float32(), 8))}), wrong)
    with pytest.raises(
        ConfigError, match=r"made by another embedder \(8-d\); the server.s embedder is minilm-l6 \(384-d\)"
    ):
        run_filter(wrong, tmp_path / "o.csv", FilterOptions(task=sst2_task.name), url, quiet=True)


@pytest.mark.server
def test_filter_resumes_after_the_server_is_killed(tmp_path, built_repo, sst2_task, rows):
    """kill -9 the server mid-job: the job stops with its progress kept; after a restart the rerun skips
    the committed chunks, and the output equals an uninterrupted run's, row for row."""
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports

    texts, _ = rows
    table = tmp_path / "t.parquet"
    n = 600
    pq.write_table(pa.table({"text": [texts[i % len(texts)] for i in range(n)], "id": list(range(n))}), table)
    repo, _ = built_repo
    http, grpc, metrics = free_ports(3)
    opts = ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)
    # Text rows go through the embedder (a few ms each): slow enough to kill the server between chunks.
    options = FilterOptions(task=sst2_task.name, max_tier="logreg", chunk_rows=50, batch_rows=25, in_flight=1)
    out = tmp_path / "out.parquet"
    parts = tmp_path / "out.parquet.parts"
    outcome = {}

    def job(url):
        try:
            outcome["summary"] = run_filter(table, out, options, url, backoff_s=FAST_RETRY, quiet=True)
        except ServerUnavailable as exc:
            outcome["error"] = exc

    with TritonServer(opts) as server:
        worker = threading.Thread(target=job, args=(server.grpc_url,))
        worker.start()
        start = time.monotonic()
        while len(list(parts.glob("part-*.arrow"))) < 2 and time.monotonic() < start + 300 and worker.is_alive():
            time.sleep(0.05)
        committed = len(list(parts.glob("part-*.arrow")))
        # The precondition, said apart from the behaviour under test: two chunks committed, the job still running.
        assert committed >= 2 and worker.is_alive(), (
            f"after {time.monotonic() - start:.0f} s the job had committed {committed} chunk(s) and "
            f"{'is running' if worker.is_alive() else 'ended'} ({outcome}); server log:\n{server.log_tail(40)}"
        )
        os.killpg(server.pid, signal.SIGKILL)
        worker.join(60)
    assert "error" in outcome, "the job should stop when the server is gone"
    assert "Progress kept" in str(outcome["error"]) and "rerun the same command" in str(outcome["error"])
    committed = len(list(parts.glob("part-*.arrow")))
    assert 2 <= committed < n // 50 and not out.exists()

    with TritonServer(opts) as server:
        summary = run_filter(table, out, options, server.grpc_url, quiet=True, llm_probe_rows=0)
        reference = run_filter(table, tmp_path / "ref.parquet", options, server.grpc_url, quiet=True, llm_probe_rows=0)
    assert summary.resumed_chunks == committed and reference.resumed_chunks == 0
    got, want = pq.read_table(out), pq.read_table(tmp_path / "ref.parquet")
    assert got.column("id").to_pylist() == list(range(n))  # nothing lost, nothing twice
    assert got.column("label").to_pylist() == want.column("label").to_pylist()
    assert np.allclose(got.column("confidence").to_numpy(), want.column("confidence").to_numpy(), atol=1e-6)
    assert not parts.exists()


@pytest.mark.server
def test_cli_embed_make_table_filter(tmp_path, server, sst2_task, rows):
    texts, gold = rows
    import pyarrow.csv as pcsv

    pcsv.write_csv(pa.table({"text": texts[:30], "gold": gold[:30]}), tmp_path / "t.csv")

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "cascade.cli.main", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )

    run = cli("embed", "t.csv", "--out", "t.parquet", "--url", server.grpc_url)
    assert run.returncode == 0, run.stderr
    assert "embed: 30 rows -> t.parquet" in run.stdout
    assert pq.read_schema(tmp_path / "t.parquet").field("embedding").type == pa.list_(pa.float32(), DIM)
    run = cli("make-table", "--from", "t.parquet", "--rows", "1000", "--out", "big.arrow")
    assert run.returncode == 0 and "1,000 rows from 30 source rows" in run.stdout, run.stderr
    run = cli(
        "filter", "big.arrow", "--task", sst2_task.name, "--out", "o.parquet", "--max-tier", "logreg",
        "--url", server.grpc_url, "--json", "s.json", "--llm-probe-rows", "2",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "filter: 1,000 rows -> o.parquet" in run.stdout and "answered by: logreg 1,000 (100.0%)" in run.stdout
    assert "cost: the large tier takes" in run.stdout  # timed on a 2-row probe
    run = cli("filter", "big.arrow", "--task", "nope", "--out", "o2.parquet", "--url", server.grpc_url)
    assert run.returncode == 2 and "unknown task 'nope'" in run.stderr


@pytest.mark.server
def test_ctrl_c_keeps_finished_chunks_and_the_rerun_resumes(tmp_path, server, sst2_task, rows):
    texts, _ = rows
    n = 600
    pq.write_table(
        pa.table({"text": [texts[i % len(texts)] for i in range(n)], "id": list(range(n))}), tmp_path / "t.parquet"
    )
    args = [
        sys.executable, "-m", "cascade.cli.main", "filter", "t.parquet", "--task", sst2_task.name, "--out", "o.csv",
        "--max-tier", "logreg", "--chunk-rows", "50", "--batch-size", "25", "--in-flight", "1",
        "--url", server.grpc_url, "--llm-probe-rows", "0",
    ]  # fmt: skip
    # A shell without job control starts background commands with SIGINT ignored, and Python then installs
    # no KeyboardInterrupt handler: give the job the default disposition, as a terminal's Ctrl-C finds it.
    job = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    parts = tmp_path / "o.csv.parts"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.arrow"))) < 2 and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 130, err
    assert "interrupted; finished chunks are kept in o.csv.parts: rerun the same command to resume" in err
    kept = len(list(parts.glob("part-*.arrow")))
    assert kept >= 2 and not (tmp_path / "o.csv").exists()
    rerun = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{kept} chunk(s) resumed" in rerun.stdout
    import pyarrow.csv as pcsv

    assert pcsv.read_csv(tmp_path / "o.csv").column("id").to_pylist() == list(range(n))
