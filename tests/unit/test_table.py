"""The table jobs (``cascade filter``, ``embed``, ``make-table``): cell checks, committed chunks and retries, without a
server (the jobs against the real one: tests/server/test_table_server.py)."""

import asyncio
import gzip
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cascade import contract, embedders
from cascade.errors import ConfigError, InvalidInput, RowsUnanswered, ServerUnavailable
from cascade.gate.config import GateConfig
from cascade.tables import local as table_module
from cascade.tables.cells import check_embedding_column, embedding_cells, text_cells
from cascade.tables.chunk_store import ChunkStore
from cascade.tables.embed_jobs import make_table
from cascade.tables.job import FilterOptions, reachable_tiers
from cascade.tables.local import run_filter
from cascade.tables.row_requests import Retry, first_contact, request_deadline_s
from cascade.tables.table_io import chunks, read_batches, table_schema, write_table_atomic
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


def test_the_shipped_datasets_are_read_by_the_jobs_reader(tmp_path):
    task = load_task("sst2")
    shipped = task.dataset.path("validation")
    assert shipped.name == "validation.parquet"  # the shipped splits are Parquet (data/README.md)
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


def test_filter_against_no_server_retries_then_says_so(tmp_path):
    from cascade.server.launcher import free_ports

    table = tmp_path / "t.csv"
    table.write_text("text\nhello\n")
    (port,) = free_ports(1)
    start = time.monotonic()
    with pytest.raises(ServerUnavailable, match=r"no server answers at 127.0.0.1:\d+ after 2 retries"):
        run_filter(table, tmp_path / "o.csv", FilterOptions(task="sst2"), f"127.0.0.1:{port}", backoff_s=FAST_RETRY)
    assert time.monotonic() - start >= sum(FAST_RETRY)


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


def test_null_embeddings_anywhere_in_a_chunk_merge_into_parquet(tmp_path):
    """A fixed-size list column with null rows becomes a variable-size list in Parquet; a null row before the end of
    a chunk once failed the merge ("Lists with non-zero length null components")."""
    store = ChunkStore(tmp_path / "o.parquet", {"job": "embed"})
    want = []
    for k, nulls in enumerate(([1], [], [0, 3])):
        valid = np.array([i not in nulls for i in range(4)])
        column = emb_array(unit_rows(4, seed=k), mask=pa.array(~valid))
        store.commit(k, pa.table({"id": list(range(4 * k, 4 * k + 4)), "embedding": column}))
        want += column.to_pylist()
    assert store.merge(tmp_path / "o.parquet") == 12
    got = pq.read_table(tmp_path / "o.parquet")
    assert got.schema.field("embedding").type == pa.list_(pa.float32())
    assert got.column("embedding").to_pylist() == want and got.column("id").to_pylist() == list(range(12))
