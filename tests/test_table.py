"""The table jobs (``cascade filter``, ``embed``, ``make-table``): cell checks and committed chunks directly,
the jobs against the real server over gRPC, and a resume after the server is killed mid-job."""

import asyncio
import gzip
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
from cascade.client import table as table_module
from cascade.client.table import (
    ChunkStore,
    FilterOptions,
    Retry,
    check_embedding_column,
    chunks,
    embedding_cells,
    first_contact,
    make_table,
    reachable_tiers,
    read_batches,
    request_deadline_s,
    run_embed,
    run_filter,
    table_schema,
    text_cells,
    write_table_atomic,
)
from cascade.errors import ConfigError, InvalidInput, RowsUnanswered, ServerUnavailable
from cascade.gate import GateConfig
from cascade.tasks import load_split, load_task

DIM = contract.EMBEDDING_DIM
FAST_RETRY = (0.1, 0.2)


def unit_rows(n, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def emb_array(vectors, mask=None):
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM, mask=mask)


# ------------------------------------------------------------------------------------------ no server
def test_chunks_have_fixed_rows_whatever_the_input_batching():
    batches = [pa.record_batch({"x": list(range(a, b))}) for a, b in ((0, 3), (3, 10), (10, 11), (11, 25))]
    got = list(chunks(iter(batches), 4))
    assert [k for k, _ in got] == list(range(7))
    assert [t.num_rows for _, t in got] == [4, 4, 4, 4, 4, 4, 1]
    assert sum((t.column("x").to_pylist() for _, t in got), []) == list(range(25))


def test_text_cells_flag_null_blank_and_invalid_utf8_rows():
    texts, errors = text_cells(pa.array(["good", None, "  ", "fine"]))
    assert errors == [None, "text is null", "text is empty", None]
    assert texts[0] == b"good" and texts[3] == b"fine"
    _, errors = text_cells(pa.array([b"ok", b"\xff bad", None], pa.binary()))
    assert errors[0] is None and "not valid UTF-8" in errors[1] and errors[2] == "text is null"


def test_embedding_cells_read_fixed_and_variable_lists():
    v = unit_rows(4)
    out, has, errors = embedding_cells(pa.chunked_array([emb_array(v)]))
    assert np.array_equal(out, v) and has.all() and errors == [None] * 4
    out, _, _ = embedding_cells(pa.chunked_array([emb_array(v).slice(1, 2)]))  # a slice reads its own rows
    assert np.array_equal(out, v[1:3])
    out, _, _ = embedding_cells(pa.chunked_array([emb_array(v[:2]), emb_array(v[2:])]))
    assert np.array_equal(out, v)

    bad = v.copy()
    bad[2, 5] = np.nan
    out, has, errors = embedding_cells(emb_array(bad, mask=pa.array([False, True, False, False])))
    assert has.tolist() == [True, False, False, True]
    assert errors == [None, None, "embedding holds NaN or Inf", None]  # a null row is no error: text is sent
    assert np.array_equal(out[3], v[3])

    ragged = pa.array([v[0].tolist(), [0.1, 0.2], None, v[3].tolist()], pa.list_(pa.float32()))
    out, has, errors = embedding_cells(ragged)
    assert has.tolist() == [True, False, False, True]
    assert errors[1] == f"embedding has 2 values, not {DIM}"
    assert np.array_equal(out[[0, 3]], v[[0, 3]])

    half = pa.FixedSizeListArray.from_arrays(pa.array(v.astype(np.float16).reshape(-1), pa.float16()), DIM)
    out, _, _ = embedding_cells(half)
    assert out.dtype == np.float32 and np.allclose(out, v, atol=1e-3)


def test_embedding_column_of_the_wrong_dimension_embedder_or_type_is_refused(tmp_path):
    served = (embedders.MINILM, DIM)
    schema = pa.schema([("embedding", pa.list_(pa.float32(), 128))])
    with pytest.raises(ConfigError, match=f"another embedder \\(128-d\\).*minilm-l6 \\({DIM}-d\\)"):
        check_embedding_column(schema, "embedding", tmp_path / "t.parquet", served)
    # Same width, another embedder: the column's record tells (Parquet keeps field metadata).
    made_by = {embedders.TABLE_METADATA_KEY: b"mpnet-base"}
    other = pa.schema([pa.field("embedding", pa.list_(pa.float32()), metadata=made_by)])
    with pytest.raises(ConfigError, match="made by mpnet-base"):
        check_embedding_column(other, "embedding", tmp_path / "t.parquet", served)
    same = pa.schema(
        [pa.field("embedding", pa.list_(pa.float32()), metadata={embedders.TABLE_METADATA_KEY: b"minilm-l6"})]
    )
    check_embedding_column(same, "embedding", tmp_path / "t.parquet", served)
    with pytest.raises(ConfigError, match="not a list of floats"):
        check_embedding_column(pa.schema([("embedding", pa.string())]), "embedding", tmp_path / "t.parquet")


def test_chunk_store_resumes_only_the_same_job(tmp_path):
    out = tmp_path / "out.parquet"
    store = ChunkStore(out, {"job": "filter", "where": None})
    store.commit(0, pa.table({"x": [1, 2]}))
    assert ChunkStore(out, {"job": "filter", "where": None}).done() == {0}
    with pytest.raises(ConfigError, match="where differ.*--restart"):
        ChunkStore(out, {"job": "filter", "where": "positive"})
    assert ChunkStore(out, {"job": "filter", "where": "positive"}, restart=True).done() == set()
    assert not list(store.dir.glob(".*.tmp"))  # a commit leaves no temporary behind


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet", ".arrow"])
def test_tables_are_written_atomically_and_read_back(tmp_path, suffix):
    table = pa.table({"text": ["a", "b", "c"], "n": [1, 2, 3]})
    out = tmp_path / f"t{suffix}"
    assert write_table_atomic([table.slice(0, 2), table.slice(2)], table.schema, out) == 3
    back = pa.Table.from_batches(list(read_batches(out, "text")))
    assert back.column("text").to_pylist() == ["a", "b", "c"]
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    if suffix == ".csv.gz":
        assert gzip.decompress(out.read_bytes()).startswith(b'"text","n"')  # gzipped, not plain text


def test_the_shipped_gzipped_datasets_are_read_by_the_jobs_reader(tmp_path):
    task = load_task("sst2")
    shipped = task.dataset.path("validation")
    assert shipped.name.endswith(".csv.gz")
    schema, _ = table_schema(shipped, "text")
    assert schema.names == ["text", "label"] and schema.field("text").type == pa.string()
    got = pa.Table.from_batches(list(read_batches(shipped, "text")))
    texts, labels = load_split(task, "validation")
    assert got.column("text").to_pylist() == texts and got.column("label").to_pylist() == labels
    # A gzipped table of one's own, with a text that holds a line break, and numbers read as text.
    path = tmp_path / "mine.csv.gz"
    path.write_bytes(gzip.compress(b'text,n\n"two\nlines",1\n10/10,2\n,3\n'))
    got = pa.Table.from_batches(list(read_batches(path, "text", strings=["n"])))
    assert got.column("text").to_pylist() == ["two\nlines", "10/10", ""] and got.column("n").to_pylist() == list("123")
    assert text_cells(got.column("text"))[1] == [None, None, "text is empty"]
    (tmp_path / "x.json.gz").write_bytes(b"")
    with pytest.raises(ConfigError, match="unsupported format '.gz'"):
        table_schema(tmp_path / "x.json.gz")


class Flaky:
    """A call that fails ``fails`` times (server unavailable), then answers; awaited, or blocking (``sync``)."""

    def __init__(self, fails, error=ServerUnavailable):
        self.fails, self.calls, self.error = fails, 0, error

    def sync(self):
        self.calls += 1
        if self.calls <= self.fails:
            raise self.error(f"refused #{self.calls}")
        return "answer"

    async def __call__(self):
        return self.sync()


@pytest.fixture
def pauses(monkeypatch):
    """The pauses the retry loop takes, recorded instead of slept."""
    taken = []

    async def sleep(seconds):
        taken.append(seconds)

    monkeypatch.setattr(table_module.asyncio, "sleep", sleep)
    return taken


def test_a_request_is_retried_with_backoff_then_answers(pauses):
    retry, flaky = Retry((0.5, 1.0, 2.0)), Flaky(2)
    assert asyncio.run(retry.call(flaky, "task t at here")) == "answer"
    assert flaky.calls == 3 and retry.retried == 2 and pauses == [0.5, 1.0]


def test_a_request_no_server_answers_is_an_error_after_the_retries(pauses):
    retry = Retry((0.5, 1.0, 2.0))
    with pytest.raises(ServerUnavailable, match=r"^task t at here: no answer after 3 retries over 4 s \(refused #4\)$"):
        asyncio.run(retry.call(Flaky(9), "task t at here"))
    assert retry.retried == 3 and pauses == [0.5, 1.0, 2.0]
    with pytest.raises(RowsUnanswered, match=r"^refused #4$"):  # the server is there: the rows get an error
        asyncio.run(Retry((0.5, 1.0, 2.0)).call(Flaky(9, RowsUnanswered), "task t"))


def test_the_first_contact_is_retried_by_the_same_loop(pauses):
    flaky = Flaky(2)
    assert first_contact(flaky.sync, "127.0.0.1:1", (0.5, 1.0, 2.0)) == "answer"
    assert flaky.calls == 3 and pauses == [0.5, 1.0]
    pauses.clear()
    expected = r"^no server answers at 127.0.0.1:1 after 3 retries \(start one with `cascade serve`\): refused #4$"
    with pytest.raises(ServerUnavailable, match=expected):
        first_contact(Flaky(9).sync, "127.0.0.1:1", (0.5, 1.0, 2.0))
    assert pauses == [0.5, 1.0, 2.0]


def test_make_table_repeats_rows_with_perturbed_unit_embeddings(tmp_path):
    v = unit_rows(5, seed=7)  # not make_table's seed: its noise would be parallel to these very rows
    source = tmp_path / "src.parquet"
    pq.write_table(pa.table({"text": list("abcde"), "gold": [0, 1, 0, 1, 1], "embedding": emb_array(v)}), source)
    info = make_table(source, tmp_path / "big.arrow", 23, noise=0.05, group_rows=7)
    assert info["rows"] == 23 and info["source_rows"] == 5
    big = pa.Table.from_batches(list(read_batches(tmp_path / "big.arrow")))
    src = big.column("source_row").to_numpy()
    assert src.tolist() == [i % 5 for i in range(23)]
    assert big.column("gold").to_pylist() == [[0, 1, 0, 1, 1][i] for i in src]
    emb, _, _ = embedding_cells(big.column("embedding"))
    copy = big.column("copy").to_numpy()
    assert np.array_equal(emb[copy == 0], v)  # copy 0 of each row is exact
    moved = emb[copy > 0]
    cos = (moved * v[src[copy > 0]]).sum(axis=1)
    assert np.allclose(np.linalg.norm(moved, axis=1), 1, atol=1e-5)
    assert (cos > 0.99).all() and (cos < 1 - 1e-6).all()  # perturbed, and only lightly
    with pytest.raises(ConfigError, match="no embedding column"):
        pq.write_table(pa.table({"text": ["a"]}), tmp_path / "plain.parquet")
        make_table(tmp_path / "plain.parquet", tmp_path / "x.parquet", 10)


def test_filter_options_are_checked():
    with pytest.raises(ConfigError, match="over the gate"):
        FilterOptions(task="t", batch_rows=contract.GATE_MAX_BATCH_SIZE + 1).check()


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
    from cascade.client import CascadeClient

    large = contract.TIER_NAMES[contract.TIER_LLM_LARGE]
    with CascadeClient(explicit_server.grpc_url) as admin:
        threshold = admin.gate_config(sst2_task.name).thresholds[contract.TIER_LLM_SMALL]
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


def test_filter_against_no_server_retries_then_says_so(tmp_path):
    from cascade.launcher import free_ports

    table = tmp_path / "t.csv"
    table.write_text("text\nhello\n")
    (port,) = free_ports(1)
    start = time.monotonic()
    with pytest.raises(ServerUnavailable, match=r"no server answers at 127.0.0.1:\d+ after 2 retries"):
        run_filter(table, tmp_path / "o.csv", FilterOptions(task="sst2"), f"127.0.0.1:{port}", backoff_s=FAST_RETRY)
    assert time.monotonic() - start >= sum(FAST_RETRY)


@pytest.mark.server
def test_filter_resumes_after_the_server_is_killed(tmp_path, built_repo, sst2_task, rows):
    """kill -9 the server mid-job: the job stops with its progress kept; after a restart the rerun skips
    the committed chunks, and the output equals an uninterrupted run's, row for row."""
    from cascade.launcher import ServerOptions, TritonServer, free_ports

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
        deadline = time.monotonic() + 120
        while len(list(parts.glob("part-*.arrow"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
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
            [sys.executable, "-m", "cascade.cli", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
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
        sys.executable, "-m", "cascade.cli", "filter", "t.parquet", "--task", sst2_task.name, "--out", "o.csv",
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


def test_a_request_bound_for_the_llm_gets_the_deadline_the_gate_may_take():
    """A fixed 120 s deadline failed LLM-heavy requests of 4,096 rows while the server was still answering them."""
    gate = GateConfig(
        "t", ("a", "b"), (0, 4), {0: 0.9}, prompts={4: {"template": "{text}", "verbalizations": ["a", "b"]}}
    )
    every = reachable_tiers(gate, FilterOptions(task="t"))
    assert every == [0, 4]
    assert reachable_tiers(gate, FilterOptions(task="t", max_tier="logreg")) == [0]
    big = request_deadline_s(gate, 4096, every, embed=True)
    assert big > 4096 * contract.DEFAULT_ROW_TIMEOUT_MS[4] / 1000  # the LLM's allowance per row, at least
    assert big > request_deadline_s(gate, 64, every, embed=True) > 120
    assert request_deadline_s(gate, 4096, [0], embed=False) < big / 10  # the embedding tier alone: minutes
    with pytest.raises(InvalidInput):
        reachable_tiers(gate, FilterOptions(task="t", max_tier="gpt"))
