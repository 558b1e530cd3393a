"""The Ray engine's parts that need no server and no Ray cluster: a chunk's rows read alone, the workers' servers
(round-robin, failover order), a worker whose servers are all gone, the CLI's new flags, and that nothing imports
``ray`` unless the Ray engine is asked for (the engine against real servers: tests/server/test_ray_server.py)."""

import gzip
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from cascade.cli.main import build_parser, main
from cascade.errors import ConfigError
from cascade.gate.config import GateConfig
from cascade.tables.chunk_store import ChunkStore
from cascade.tables.filter_chunk import FilterPlan
from cascade.tables.job import FilterOptions
from cascade.tables.ray_worker import RESULT_SCHEMA, ChunkWorker, UrlCounter, split_urls, worker_urls
from cascade.tables.table_io import chunks, read_batches, read_rows_range, write_table_atomic

N = 1000


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """The same rows as CSV, gzipped CSV, Parquet (small row groups, and pandas metadata) and Arrow IPC (batches
    of another size than the chunks)."""
    folder = tmp_path_factory.mktemp("tables")
    emb = pa.FixedSizeListArray.from_arrays(pa.array(np.random.default_rng(0).random(N * 4, np.float32)), 4)
    text = [f"row {i}" if i % 97 else None for i in range(N)]
    table = pa.table({"text": text, "id": list(range(N)), "embedding": emb})
    plain = table.drop_columns(["embedding"])
    pq.write_table(table, folder / "t.parquet", row_group_size=300)
    pq.write_table(pa.Table.from_pandas(plain.to_pandas()), folder / "pandas.parquet", row_group_size=170)
    write_table_atomic([pa.Table.from_batches([b]) for b in table.to_batches(123)], table.schema, folder / "t.arrow")
    pcsv.write_csv(plain, folder / "t.csv")
    (folder / "t.csv.gz").write_bytes(gzip.compress((folder / "t.csv").read_bytes()))
    return folder


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz", "t.parquet", "pandas.parquet", "t.arrow"])
def test_a_chunks_rows_read_alone_equal_the_whole_tables_chunk(tables, name):
    path = tables / name
    whole = dict(chunks(read_batches(path, "text"), 64))
    assert len(whole) == -(-N // 64)
    for k, want in whole.items():
        got = read_rows_range(path, k * 64, (k + 1) * 64, text_column="text")
        assert got.equals(want, check_metadata=True), k  # the same schema (metadata too) and values
    odd = read_rows_range(path, 290, 611, text_column="text")  # across row groups / record batches
    assert odd.column("id").to_pylist() == list(range(290, 611))
    assert read_rows_range(path, 990, 2000, text_column="text").column("id").to_pylist() == list(range(990, N))
    beyond = read_rows_range(path, 5000, 6000, text_column="text")
    assert beyond.num_rows == 0 and beyond.schema.equals(whole[0].schema)
    assert read_rows_range(path, 10, 12, ["id"], "text").column_names == ["id"]


def test_each_worker_sends_to_one_url_round_robin_and_fails_over_to_the_next():
    urls = ["a:1", "b:2", "c:3"]
    assert [worker_urls(urls, i)[0] for i in range(7)] == ["a:1", "b:2", "c:3", "a:1", "b:2", "c:3", "a:1"]
    assert worker_urls(urls, 1) == ["b:2", "c:3", "a:1"]  # then the others, in order, to fail over to
    assert worker_urls(["only:1"], 5) == ["only:1"]
    assert split_urls(" a:1, b:2 ,") == ["a:1", "b:2"] and split_urls(["a:1"]) == ["a:1"]
    with pytest.raises(ConfigError, match="no server given"):
        split_urls(" , ")


def test_a_jobs_workers_are_killed_at_its_end_even_when_one_is_gone_already():
    """The counter keeps the handles that workers register with (ChunkWorker does; BatchClassifier does not), and the
    driver kills each of them, then the counter, with no restart; a dead one does not spare the others."""
    from cascade.tables.ray_engine import _end_workers

    counter = UrlCounter()
    assert [counter.next("w0"), counter.next(), counter.next("w2")] == [0, 1, 2]
    killed = []

    class Ray:  # what _end_workers uses of ray, on a counter in this process
        def get(self, ref, timeout):
            return ref

        def kill(self, handle, no_restart):
            killed.append((handle, no_restart))
            if handle == "w0":
                raise ValueError("the actor is dead")

    class Handle:
        class workers:  # noqa: N801 - an actor method's .remote()
            remote = staticmethod(counter.workers)

    handle = Handle()
    _end_workers(Ray(), handle)
    assert killed == [("w0", True), ("w2", True), (handle, True)]


def test_a_worker_whose_servers_are_all_gone_reports_the_error_after_failing_over(tmp_path):
    """Both servers unreachable: the worker retries one, fails over to the other, retries it, then returns the error
    (the driver stops the job with it) and commits nothing."""
    from cascade.server.launcher import free_ports

    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["good", "bad"] * 10}), table)
    options = FilterOptions(task="sst2", chunk_rows=8)
    gate = GateConfig("sst2", ("negative", "positive"), (0,), {})
    plan = FilterPlan(options, gate, gate.labels, None, None, (0,), False, (0.01,))
    store = ChunkStore(tmp_path / "o.parquet", {"job": "filter"})
    urls = [f"127.0.0.1:{port}" for port in free_ports(2)]
    worker = ChunkWorker(plan, str(table), 20, 8, str(store.out), store.manifest, urls, None, 2, (0.01,))
    got = worker(pa.table({"chunk": [2]}))
    assert got.schema == RESULT_SCHEMA
    row = got.to_pylist()[0]
    assert row["chunk"] == 2 and row["error_kind"] == "ServerUnavailable" and row["url"] == urls[1]
    assert f"no server of {urls[0]}, {urls[1]} answers" in row["error"]
    assert worker.endpoint.failovers == 1 and store.done() == set()


def test_the_cli_takes_the_engine_flags():
    parser = build_parser()
    args = parser.parse_args(
        ["filter", "t.csv", "--task", "sst2", "--out", "o.csv", "--engine", "ray", "--url", "a:1,b:2",
         "--concurrency", "3", "--address", "auto"]
    )  # fmt: skip
    assert (args.engine, args.url, args.concurrency, args.address) == ("ray", "a:1,b:2", 3, "auto")
    args = parser.parse_args(["embed", "t.csv", "--out", "o.parquet", "--engine", "ray"])
    assert (args.engine, args.concurrency, args.address) == ("ray", None, None)
    assert parser.parse_args(["filter", "t.csv", "--task", "t", "--out", "o.csv"]).engine == "local"


def test_the_cli_refuses_bad_engine_flags(capsys, monkeypatch, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["filter", "t.csv", "--task", "t", "--out", "o.csv", "--concurrency", "0"])
    assert exit_.value.code == 2 and "must be 1 or more, not 0" in capsys.readouterr().err
    base = ["filter", str(tmp_path / "t.csv"), "--task", "t", "--out", str(tmp_path / "o.csv")]
    assert main([*base, "--url", "a:1,b:2"]) == 2
    assert "the local engine sends to one server (several need --engine ray)" in capsys.readouterr().err
    assert main([*base, "--concurrency", "2"]) == 2
    assert "--address and --concurrency are options of --engine ray" in capsys.readouterr().err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert main([*base, "--engine", "ray"]) == 2
    assert "--engine ray needs Ray: pip install 'triton-cascade[ray]'" in capsys.readouterr().err


def test_ray_is_imported_only_when_the_ray_engine_is_asked_for(tmp_path):
    """``import cascade``, the CLI, the Ray engine and API modules themselves and a local filter job (here against no
    server) leave ``ray`` unimported."""
    (tmp_path / "t.csv").write_text("text\nhello\n")
    probe = f"""
import json, sys
import cascade, cascade.cli.main, cascade.tables, cascade.tables.ray_engine, cascade.tables.ray_api
from cascade.errors import ServerUnavailable
from cascade.server.launcher import free_ports
from cascade.tables.job import FilterOptions
from cascade.tables.local import run_filter
(port,) = free_ports(1)
try:
    run_filter({str(tmp_path / "t.csv")!r}, {str(tmp_path / "o.csv")!r}, FilterOptions(task="sst2"),
               f"127.0.0.1:{{port}}", backoff_s=(0.01,), quiet=True)
except ServerUnavailable:
    pass
print(json.dumps(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))))
"""
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []


def test_counts_travel_as_a_result_row_and_add_up():
    from cascade.tables.job import Counts

    counts = Counts(rows=5, error_rows=1, degraded_rows=2, retried_rows=4, retries=2, failovers=1, cpu_s=0.5)
    counts.tiers.update({0: 3, 4: 1})
    row = {"chunk": 7, **counts.to_row(), "url": "u", "error": None, "error_kind": None}
    assert pa.Table.from_pylist([row], schema=RESULT_SCHEMA).to_pylist() == [row]  # the row is the schema's
    back = Counts.from_row(row)
    assert back == counts
    total = Counts()
    total.add(counts)
    total.add(back)
    assert (total.rows, total.retries, total.cpu_s, total.tiers) == (10, 4, 1.0, {0: 6, 4: 2})
