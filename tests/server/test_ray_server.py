"""The Ray engine (``--engine ray``) in a local Ray against TWO real tritonservers serving the same
repository: its output equals the local engine's, both servers serve, bad input gets the same errors, a server killed
mid-job is failed over with no row lost or repeated, a job interrupted on one engine is resumed by the other, and
``classify_dataset`` labels a Ray Dataset like the filter job. A job's workers end with it; a Ray that a job or
``ray_session`` started is shut down at its end, a Ray already running is left running."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cascade import contract
from cascade.errors import CascadeError, ConfigError, ServerUnavailable
from cascade.tables import ray_engine
from cascade.tables.embed_jobs import run_embed
from cascade.tables.job import FilterOptions
from cascade.tables.local import run_filter
from cascade.tables.ray_api import classify_dataset
from cascade.tables.ray_engine import run_embed_ray, run_filter_ray
from cascade.tasks import load_split

FAST_RETRY = (0.1, 0.2)
pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def servers(built_repo, sst2_task, tmp_path_factory):
    """Two tritonservers on the same repository, started side by side, with the embedder, the gate and the tiers up
    to the encoder loaded: the jobs here stop at xgboost, and a server less holding the LLMs (GBs each, in every
    instance) leaves room on a 24 GB machine for the other test worker's servers."""
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports

    repo, _ = built_repo
    name = sst2_task.name
    models = [contract.EMBEDDER_MODEL, contract.gate_model_name(name)]
    tiers = (contract.TIER_LOGREG, contract.TIER_XGBOOST, contract.TIER_ENCODER)
    models += [contract.tier_model_name(name, t) for t in tiers]
    ports = free_ports(6)
    started = [
        TritonServer(
            ServerOptions(
                repository=repo,
                http_port=h,
                grpc_port=g,
                metrics_port=m,
                model_control_mode="explicit",
                load_models=models,
            )
        )
        for h, g, m in (ports[:3], ports[3:])
    ]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda s: s.start(), started))
    yield started
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module's jobs (each finds it running and leaves it so), shut down at the module's end."""
    with ray_engine.ray_session(num_cpus=6) as ray:
        yield ray


def ray_processes(env_mark: str | None = None) -> dict[int, str]:
    """Live Ray processes (a command line that says ray), pid -> command line: this process's descendants, or with
    ``env_mark`` (``NAME=value``) those whose environment carries it (a subprocess's Ray, orphaned once it exits)."""
    found, parents = {}, {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry}/environ", "rb") as f:
                marked = env_mark is not None and env_mark.encode() in f.read().split(b"\0")
        except (OSError, IndexError):
            continue
        parents[int(entry)] = int(fields[1])
        if fields[0] != "Z" and (cmd.startswith("ray::") or "/ray/" in cmd) and (marked or env_mark is None):
            found[int(entry)] = cmd
    if env_mark is None:
        for pid in list(found):
            ancestor = parents.get(pid, 0)
            while ancestor > 1 and ancestor != os.getpid():
                ancestor = parents.get(ancestor, 0)
            if ancestor != os.getpid():
                del found[pid]
    return found


def left_after(find, timeout_s: float = 30) -> dict[int, str]:
    """What ``find()`` still returns after up to ``timeout_s`` (a killed actor's process exits within seconds)."""
    deadline = time.monotonic() + timeout_s
    while (left := find()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def chunk_workers() -> dict[int, str]:
    return {pid: cmd for pid, cmd in ray_processes().items() if "ChunkWorker" in cmd}


@pytest.fixture(scope="module")
def texts(sst2_task):
    texts, _ = load_split(sst2_task, "validation", limit=150)
    return texts


def _text_table(path, texts, n):
    """``n`` rows (the texts repeated), with an id, a null and a blank text among them."""
    body = [texts[i % len(texts)] for i in range(n)]
    body[7], body[100] = None, "   "
    pq.write_table(pa.table({"text": body, "id": list(range(n))}), path)
    return path


def _same_output(got, want):
    got, want = pq.read_table(got), pq.read_table(want)
    assert got.column_names == want.column_names and got.num_rows == want.num_rows
    for name in got.column_names:
        if name == "confidence":
            # The embedder batches rows of other requests with them: its floats may differ in the last bits.
            assert np.allclose(
                got.column(name).to_numpy(zero_copy_only=False), want.column(name).to_numpy(), atol=1e-5, equal_nan=True
            )
        else:
            assert got.column(name).to_pylist() == want.column(name).to_pylist(), name


def _gate_rows(servers, task):
    from cascade_client import CascadeClient

    counts = []
    for server in servers:
        with CascadeClient(server.grpc_url) as client:
            counts.append(client.model_stats()[task].rows)
    return counts


def test_ray_over_two_servers_equals_the_local_engine(tmp_path, servers, ray_session, sst2_task, texts):
    """Text and precomputed-embedding tables, 64-row chunks: ``embed`` and ``filter`` on Ray over both servers write
    the local engine's output; both servers' gates served rows."""
    a, b = servers
    urls = [a.grpc_url, b.grpc_url]
    table = _text_table(tmp_path / "t.parquet", texts, 400)
    before = _gate_rows(servers, sst2_task.name)
    # The embedding tiers (the embedder in the loop for text): the tiers past them batch rows from other requests.
    options = FilterOptions(task=sst2_task.name, max_tier="xgboost", chunk_rows=64, batch_rows=32)
    ray_sum = run_filter_ray(
        table, tmp_path / "ray.parquet", options, urls, concurrency=4, llm_probe_rows=0, quiet=True
    )
    local = run_filter(table, tmp_path / "local.parquet", options, a.grpc_url, llm_probe_rows=0, quiet=True)
    _same_output(tmp_path / "ray.parquet", tmp_path / "local.parquet")
    assert (ray_sum.rows, ray_sum.tiers, ray_sum.error_rows) == (local.rows, local.tiers, local.error_rows)
    assert ray_sum.rows == 400 and ray_sum.error_rows == 2  # the null and the blank text
    assert ray_sum.engine == "ray" and not (tmp_path / "ray.parquet.parts").exists()
    after = _gate_rows(servers, sst2_task.name)
    assert after[1] > before[1] and after[0] - before[0] > 398  # B served some rows; A too, besides the local job

    emb_ray = run_embed_ray(table, tmp_path / "emb_ray.parquet", urls, chunk_rows=64, concurrency=3, quiet=True)
    run_embed(table, tmp_path / "emb.parquet", a.grpc_url, chunk_rows=64, quiet=True)
    assert emb_ray.rows == 400 and emb_ray.error_rows == 2
    got, want = pq.read_table(tmp_path / "emb_ray.parquet"), pq.read_table(tmp_path / "emb.parquet")
    assert got.schema.equals(want.schema, check_metadata=True)
    vectors = [np.stack(t.column("embedding").drop_null().to_numpy(zero_copy_only=False)) for t in (got, want)]
    assert np.allclose(*vectors, atol=1e-5)
    capped = replace(options, max_tier="logreg", prefix="ai_")  # no text on the wire: the paper's proxy
    run_filter_ray(tmp_path / "emb.parquet", tmp_path / "p_ray.arrow", capped, urls, llm_probe_rows=0, quiet=True)
    run_filter(tmp_path / "emb.parquet", tmp_path / "p.arrow", capped, a.grpc_url, llm_probe_rows=0, quiet=True)
    got = pa.ipc.open_file(tmp_path / "p_ray.arrow").read_all()
    want = pa.ipc.open_file(tmp_path / "p.arrow").read_all()
    assert got.equals(want) and got.column("ai_tier").drop_null().unique().to_pylist() == [contract.TIER_LOGREG]
    assert left_after(chunk_workers) == {}  # each job's workers ended with it
    assert ray_session.is_initialized()  # the module's Ray, which the jobs found running, runs on


def _error(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except CascadeError as exc:
        return type(exc), str(exc)
    raise AssertionError("no error")


def test_bad_input_gets_the_local_engines_errors(tmp_path, servers, ray_session, sst2_task):
    from cascade.server.launcher import free_ports

    url = servers[0].grpc_url
    (tmp_path / "body.csv").write_text("body\nhello\n")
    (tmp_path / "labelled.csv").write_text("text,label\nhello,1\n")
    (tmp_path / "good.csv").write_text("text\nhello\n")
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"text": ["a"], "embedding": pa.array([[0.0] * 8], pa.list_(pa.float32(), 8))}), wrong)
    (dead,) = free_ports(1)
    cases = [
        ("body.csv", FilterOptions(task=sst2_task.name), [url], "no text column 'text'"),
        ("labelled.csv", FilterOptions(task=sst2_task.name), [url], r"already has column\(s\) \['label'\]"),
        ("wrong.parquet", FilterOptions(task=sst2_task.name), [url], r"made by another embedder \(8-d\)"),
        ("wrong.parquet", FilterOptions(task=sst2_task.name, where="maybe"), [url], "'maybe' is not a label"),
        ("good.csv", FilterOptions(task=sst2_task.name), [f"127.0.0.1:{dead}"], "no server answers at 127.0.0.1"),
    ]
    for name, options, urls, message in cases:
        local = _error(run_filter, tmp_path / name, tmp_path / "o.csv", options, urls[0], backoff_s=FAST_RETRY)
        ray = _error(run_filter_ray, tmp_path / name, tmp_path / "o.csv", options, urls, backoff_s=FAST_RETRY)
        assert ray == local and local[0] in (ConfigError, ServerUnavailable), (name, local, ray)
        assert re.search(message, local[1]), (message, local[1])
    # A second server that does not answer stops the job before any row is sent, naming it.
    urls = [url, f"127.0.0.1:{dead}"]
    kind, text = _error(
        run_filter_ray, tmp_path / "good.csv", tmp_path / "o.csv", cases[-1][1], urls, backoff_s=FAST_RETRY
    )
    assert kind is ServerUnavailable and f"no server answers at 127.0.0.1:{dead} after 2 retries" in text


def test_classify_dataset_adds_the_filter_jobs_columns(tmp_path, servers, ray_session, sst2_task, texts):
    import ray.data

    urls = [s.grpc_url for s in servers]
    source = pa.table({"text": texts[:120], "id": list(range(120))})
    blocks = ray.data.from_arrow([source.slice(i, 30) for i in range(0, 120, 30)])  # a block for each worker
    ds = classify_dataset(blocks, sst2_task.name, urls, max_tier="xgboost", batch_rows=16, concurrency=2)
    got = ds.to_arrow_refs()
    got = pa.concat_tables(ray_session.get(got)).sort_by("id")
    assert got.column_names == ["text", "id", "label", "confidence", "tier", "degraded", "error"]
    pq.write_table(source, tmp_path / "t.parquet")
    options = FilterOptions(task=sst2_task.name, max_tier="xgboost")
    run_filter(tmp_path / "t.parquet", tmp_path / "o.parquet", options, urls[1], llm_probe_rows=0, quiet=True)
    want = pq.read_table(tmp_path / "o.parquet")
    assert got.column("label").to_pylist() == want.column("label").to_pylist()
    assert got.column("tier").to_pylist() == want.column("tier").to_pylist()
    with pytest.raises(ConfigError, match=r"table \(Ray Dataset\): no text column 'body'"):
        classify_dataset(ray.data.from_arrow(source), sst2_task.name, urls, text_column="body")


class _FailingWork:
    """A chunk's work that fails as an unreachable server does for the chunks in ``bad``, and keeps the others."""

    text_column = "text"

    def __init__(self, bad, chunk_rows):
        self.bad, self.chunk_rows = set(bad), chunk_rows

    async def run(self, client, limit, retry, url, chunk):
        from cascade.tables.job import Counts

        if chunk.column("id")[0].as_py() // self.chunk_rows in self.bad:
            raise ServerUnavailable(f"task t at {url}: no answer after 0 retries")
        return chunk, Counts(rows=chunk.num_rows)


def test_a_chunk_no_server_answers_stops_the_job_and_keeps_the_others(tmp_path, ray_session):
    """The driver's side of a worker's error (no server involved): the job stops with the worker's error and says
    how many chunks it kept; those are whole chunks, and the failed one is not among them."""
    import ray.cloudpickle

    from cascade.tables.chunk_store import ChunkStore
    from cascade.tables.ray_engine import dispatch

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    pq.write_table(pa.table({"text": ["x"] * 100, "id": list(range(100))}), tmp_path / "t.parquet")
    store = ChunkStore(tmp_path / "o.parquet", {"job": "test"})

    class Progress:
        def update(self, n):
            pass

    work = _FailingWork({6}, 10)
    with pytest.raises(ServerUnavailable, match=r"no answer after 0 retries\. Progress kept: \d+ chunk\(s\) committed"):
        dispatch(work, tmp_path / "t.parquet", 100, 10, store, ["127.0.0.1:1"], 2, 1, (), Progress())
    assert 6 not in store.done() and len(store.done()) < 10
    assert left_after(chunk_workers) == {}  # a failed job's workers end with it too
    for k in store.done():
        assert store.read(store.part(k)).column("id").to_pylist() == list(range(10 * k, 10 * k + 10))


def test_a_ray_job_interrupted_by_ctrl_c_is_resumed_by_the_local_engine(tmp_path, servers, sst2_task, texts):
    """The CLI with ``--engine ray`` over both servers, Ctrl-C after two chunks: the chunks stay; the local engine
    resumes the job (the engine is not part of the manifest) and the output is the uninterrupted one."""
    n = 1000
    _text_table(tmp_path / "t.parquet", texts, n)
    urls = ",".join(s.grpc_url for s in servers)
    args = [
        sys.executable, "-m", "cascade.cli.main", "filter", "t.parquet", "--task", sst2_task.name, "--out", "o.parquet",
        "--max-tier", "logreg", "--chunk-rows", "50", "--batch-size", "25", "--in-flight", "1", "--engine", "ray",
        "--url", urls, "--concurrency", "2", "--llm-probe-rows", "0",
    ]  # fmt: skip
    job_id = uuid.uuid4().hex  # in the environment of the job's own local Ray
    job = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), env={**os.environ, "CASCADE_RAY_JOB": job_id},
    )  # fmt: skip
    parts = tmp_path / "o.parquet.parts"
    deadline = time.monotonic() + 600  # generous for 2 busy cores; it stops at the second chunk
    while len(list(parts.glob("part-*.arrow"))) < 2 and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130, err
    assert "interrupted; finished chunks are kept in o.parquet.parts: rerun the same command to resume" in err
    assert left_after(lambda: ray_processes(f"CASCADE_RAY_JOB={job_id}")) == {}  # the Ray it started went with it
    kept = len(list(parts.glob("part-*.arrow")))
    assert 2 <= kept < n // 50 and not (tmp_path / "o.parquet").exists()
    options = FilterOptions(task=sst2_task.name, max_tier="logreg", chunk_rows=50)
    url = servers[0].grpc_url
    resumed = run_filter(tmp_path / "t.parquet", tmp_path / "o.parquet", options, url, llm_probe_rows=0, quiet=True)
    run_filter(tmp_path / "t.parquet", tmp_path / "ref.parquet", options, url, llm_probe_rows=0, quiet=True)
    assert resumed.resumed_chunks >= kept and resumed.rows == n
    assert pq.read_table(tmp_path / "o.parquet").column("id").to_pylist() == list(range(n))
    _same_output(tmp_path / "o.parquet", tmp_path / "ref.parquet")


def test_a_server_killed_mid_job_is_failed_over(tmp_path, servers, ray_session, sst2_task, texts):
    """kill -9 of one server while the Ray job runs: its workers fail over to the other server and the job finishes;
    no row is lost or repeated (the local engine's output). Kills the module's second server: the last test."""
    a, b = servers
    n = 1000
    table = _text_table(tmp_path / "t.parquet", texts, n)
    options = FilterOptions(task=sst2_task.name, max_tier="logreg", chunk_rows=40, batch_rows=20, in_flight=1)
    parts = tmp_path / "o.parquet.parts"
    outcome = {}

    def job():
        try:
            outcome["summary"] = run_filter_ray(
                table,
                tmp_path / "o.parquet",
                options,
                [a.grpc_url, b.grpc_url],
                concurrency=2,
                backoff_s=FAST_RETRY,
                llm_probe_rows=0,
                quiet=True,
            )
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    worker = threading.Thread(target=job)
    worker.start()
    # Generous: on 2 busy cores (a busy loop and an LLM job beside it) Ray's workers took over 180 s to start.
    deadline = time.monotonic() + 600
    while len(list(parts.glob("part-*.arrow"))) < 3 and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.05)
    assert len(list(parts.glob("part-*.arrow"))) >= 3, outcome.get("error", "no 3 chunks committed in 600 s")
    os.killpg(b.pid, signal.SIGKILL)
    worker.join(600)
    assert "summary" in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert summary.failovers >= 1 and summary.retries >= 1 and summary.rows == n
    run_filter(table, tmp_path / "ref.parquet", options, a.grpc_url, llm_probe_rows=0, quiet=True)
    assert pq.read_table(tmp_path / "o.parquet").column("id").to_pylist() == list(range(n))
    _same_output(tmp_path / "o.parquet", tmp_path / "ref.parquet")


def test_ray_session_stops_only_a_ray_it_started():
    """In a fresh process: a ``ray_session`` that starts Ray shuts it down at the end of the block, also when the block
    raises, and its processes are gone; one entered with Ray already running leaves it running."""
    probe = """
import json, ray
from cascade.tables.ray_engine import init_ray, ray_session
seen = []
try:
    with ray_session(num_cpus=1):
        seen.append(ray.is_initialized())
        raise KeyboardInterrupt
except KeyboardInterrupt:
    seen.append(ray.is_initialized())
init_ray(num_cpus=1)
with ray_session():
    pass
seen.append(ray.is_initialized())
ray.shutdown()
print(json.dumps(seen))
"""
    job_id = uuid.uuid4().hex
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=600,
        env={**os.environ, "CASCADE_RAY_JOB": job_id},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[true, false, true]"
    assert left_after(lambda: ray_processes(f"CASCADE_RAY_JOB={job_id}")) == {}
