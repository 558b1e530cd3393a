"""``python -m cascade.bench.ray_table``: the filter job on the Ray engine against the local engine.

On the tables of ``cascade bench table`` (``bench/work/<task>/``): a table of precomputed embeddings (Arrow IPC,
``make-table`` from the embedded held-out split) and a table of texts (the held-out texts repeated), each filtered
through the embedding tiers (``max_tier``: the paper's proxy; from text, the embedder in the loop):

- the local engine (one process, one server);
- the Ray engine (a local Ray) against 1 server, then against 2 servers (two tritonservers on the same repository);

and for each: rows/s, the client's CPU seconds per row (the local job's process; the Ray driver and its workers,
not Ray's own daemons), and Ray's overhead per row over the local engine on 1 server (wall time difference / rows:
it holds the workers' start, a fixed cost that a larger table spreads thinner). Ray's own start (``ray.init``) is
timed apart. The Ray outputs are checked against the local engine's labels.

Row counts are arguments with small defaults; a real run: see docs/tables.md ("The Ray engine").
Results: ``bench/results/ray-table-<time>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cascade import contract
from cascade.errors import ConfigError
from cascade.paths import BENCH_WORK_DIR, DEFAULT_REPO
from cascade.results import command_line, machine, now_iso, save_result
from cascade.tables.job import FilterOptions, JobSummary
from cascade.tables.table_io import read_batches
from cascade.tasks import TaskSpec, load_split, load_task

PREFIX = "ai_"


def _labels(out: Path) -> list:
    return pa.Table.from_batches(list(read_batches(out))).column(PREFIX + "label").to_pylist()


def _server_cpu_s(servers) -> float:
    """CPU seconds (user + system) the servers' process trees have used so far: tritonserver and its backend stubs."""
    import psutil

    total = 0.0
    for server in servers:
        try:
            root = psutil.Process(server.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


def _scale_estimate(block: dict) -> dict:
    """What N machines would give, from the per-row CPU of the 2-server Ray run: client (driver and workers) plus
    server. The rows are independent, so the work spreads linearly while the table reads and the parts folder keep
    up; Ray's fixed start is left out."""
    run = block["ray_2_servers"]
    per_row = (run["client_cpu_s_per_row"] or 0.0) + (run["server_cpu_s_per_row"] or 0.0)
    if per_row <= 0:
        return {}
    return {
        "cpu_s_per_row": per_row,
        "rows_per_s_per_core": 1 / per_row,
        "rows_per_s_10_machines_16_cores": 160 / per_row,
        "how": "N machines x C cores, each a server and its workers: about N * C / cpu_s_per_row rows/s",
    }


def _figures(summary: JobSummary, server_cpu: float) -> dict:
    cpu = summary.client_cpu_s or 0.0
    return {
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_s_per_row": server_cpu / summary.rows if summary.rows else None,
        "rows": summary.rows,
        "wall_s": round(summary.wall_s, 3),
        "rows_per_s": round(summary.rows_per_s, 1),
        "client_cpu_s": round(cpu, 3),
        "client_cpu_s_per_row": cpu / summary.rows if summary.rows else None,
        "retries": summary.retries,
        "failovers": summary.failovers,
        "tiers": summary.tiers,
    }


def _embedded_ok(path: Path, served: tuple[str, int]) -> bool:
    """``path`` exists and its embedding column was made by the served embedder (else it is made again)."""
    from cascade.tables.cells import check_embedding_column
    from cascade.tables.table_io import table_schema

    if not path.is_file():
        return False
    try:
        check_embedding_column(table_schema(path)[0], "embedding", path, served)
    except ConfigError:
        return False
    return True


def _tables(task: TaskSpec, url: str, served, rows: int, text_rows: int, work: Path, data_dir) -> tuple[Path, Path]:
    from cascade.tables.embed_jobs import make_table, run_embed

    texts, gold_index = load_split(task, "validation", data_dir)
    gold = [task.labels[i] for i in gold_index]
    source, emb = work / "source.parquet", work / "source_emb.parquet"
    if not _embedded_ok(emb, served):
        pq.write_table(pa.table({"text": texts, "gold": gold}), source)
        run_embed(source, emb, url, restart=True, quiet=True)
    big = work / f"big-{rows}.arrow"  # the file `cascade bench table` makes for (a)
    if not _embedded_ok(big, served):
        big.unlink(missing_ok=True)
        make_table(emb, big, rows)
    text = work / f"text-{text_rows}.parquet"  # and for (b)
    reps = np.arange(text_rows) % len(texts)
    pq.write_table(pa.table({"text": [texts[i] for i in reps], "gold": [gold[i] for i in reps]}), text)
    return big, text


def bench_ray_table(
    task: TaskSpec,
    repo: Path,
    rows: int = 100_000,
    text_rows: int = 1_000,
    chunk_rows: int = 16_384,
    text_chunk_rows: int = 256,
    concurrency: int | None = None,
    data_dir: str | None = None,
    work: Path = BENCH_WORK_DIR,
) -> dict:
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports
    from cascade.tables.local import run_filter
    from cascade.tables.ray_engine import init_ray, run_filter_ray, workers
    from cascade_client import CascadeClient

    work = Path(work) / task.name
    work.mkdir(parents=True, exist_ok=True)
    ports = free_ports(6)
    servers = [
        TritonServer(ServerOptions(repository=Path(repo), http_port=h, grpc_port=g, metrics_port=m))
        for h, g, m in (ports[:3], ports[3:])
    ]
    result: dict = {
        "benchmark": "ray-table",
        "task": task.name,
        "when": now_iso(),
        "command": command_line(prog="python -m cascade.bench.ray_table"),
        "machine": machine(),
        "note": "the servers, the Ray workers and the driver share the machine's cores; gRPC over loopback",
    }
    try:
        for server in servers:
            server.start()
        urls = [s.grpc_url for s in servers]
        with CascadeClient(urls[0]) as client:
            gate, served = client.task_info(task.name), client.embedder()
        embedding_tiers = [t for t in gate.tiers if t in contract.EMBEDDING_TIERS]
        if not embedding_tiers:
            raise ConfigError(f"task {task.name} enables no embedding tier: the benchmark needs one")
        cap = contract.TIER_NAMES[max(embedding_tiers)]
        big, text = _tables(task, urls[0], served, rows, text_rows, work, data_dir)
        runs = {"precomputed_arrow": (big, chunk_rows), "text": (text, text_chunk_rows)}
        kw = {"restart": True, "llm_probe_rows": 0, "quiet": True}
        summaries: dict[str, dict[str, JobSummary]] = {name: {} for name in runs}
        server_cpu: dict[str, dict[str, float]] = {name: {} for name in runs}
        for name, (table, chunk) in runs.items():  # the local engine first, before Ray runs in this process
            options = FilterOptions(task=task.name, max_tier=cap, prefix=PREFIX, chunk_rows=chunk)
            cpu0 = _server_cpu_s(servers)
            summaries[name]["local"] = run_filter(table, work / f"ray-{name}-local.parquet", options, urls[0], **kw)
            server_cpu[name]["local"] = _server_cpu_s(servers) - cpu0
            print(f"[bench] {name}: local {summaries[name]['local'].rows_per_s:,.0f} rows/s")
        t = time.perf_counter()
        init_ray(num_cpus=max(os.cpu_count() or 1, workers(concurrency, urls) + 1))
        result["ray_init_s"] = round(time.perf_counter() - t, 2)
        result["settings"] = {
            "max_tier": cap, "rows": rows, "text_rows": text_rows, "chunk_rows": chunk_rows,
            "text_chunk_rows": text_chunk_rows, "workers_1_server": workers(concurrency, urls[:1]),
            "workers_2_servers": workers(concurrency, urls),
        }  # fmt: skip
        for name, (table, chunk) in runs.items():
            options = FilterOptions(task=task.name, max_tier=cap, prefix=PREFIX, chunk_rows=chunk)
            for key, some in (("ray_1_server", urls[:1]), ("ray_2_servers", urls)):
                out = work / f"ray-{name}-{key}.parquet"
                cpu0 = _server_cpu_s(servers)
                summaries[name][key] = run_filter_ray(table, out, options, some, concurrency=concurrency, **kw)
                server_cpu[name][key] = _server_cpu_s(servers) - cpu0
                print(f"[bench] {name}: {key} {summaries[name][key].rows_per_s:,.0f} rows/s")
            local, ray1, ray2 = (summaries[name][k] for k in ("local", "ray_1_server", "ray_2_servers"))
            labels = {k: _labels(work / f"ray-{name}-{k}.parquet") for k in summaries[name]}
            result[name] = {k: _figures(s, server_cpu[name][k]) for k, s in summaries[name].items()} | {
                "ray_overhead_us_per_row": (ray1.wall_s - local.wall_s) / local.rows * 1e6,
                "ray_2_over_1_server": ray2.rows_per_s / ray1.rows_per_s if ray1.rows_per_s else None,
                "labels_equal_local": labels["ray_1_server"] == labels["local"] == labels["ray_2_servers"],
            }
            result[name]["estimate"] = _scale_estimate(result[name])
            for key in summaries[name]:
                (work / f"ray-{name}-{key}.parquet").unlink(missing_ok=True)
    finally:
        if "ray" in sys.modules:  # the Ray this benchmark started ends with it
            sys.modules["ray"].shutdown()
        for server in servers:
            server.stop()
    return result


def print_result(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(
        title=f"filter job, local vs Ray engine, task {result['task']} (max tier {result['settings']['max_tier']})"
    )
    columns = ("table", "engine", "rows", "rows/s", "client CPU µs/row", "server CPU µs/row", "Ray overhead µs/row")
    for column in columns:
        table.add_column(column, justify="right")
    for name in ("precomputed_arrow", "text"):
        block = result[name]
        for engine in ("local", "ray_1_server", "ray_2_servers"):
            f = block[engine]
            cpu = "" if f["client_cpu_s_per_row"] is None else f"{f['client_cpu_s_per_row'] * 1e6:,.1f}"
            server = "" if f["server_cpu_s_per_row"] is None else f"{f['server_cpu_s_per_row'] * 1e6:,.1f}"
            over = f"{block['ray_overhead_us_per_row']:,.1f}" if engine == "ray_1_server" else ""
            table.add_row(name, engine, f"{f['rows']:,}", f"{f['rows_per_s']:,.1f}", cpu, server, over)
    console.print(table)
    console.print(f"ray.init: {result['ray_init_s']} s; labels equal to the local engine's: "
                  f"{all(result[n]['labels_equal_local'] for n in ('precomputed_arrow', 'text'))}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cascade.bench.ray_table", description=__doc__)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the precomputed table (%(default)s)")
    parser.add_argument("--text-rows", type=int, default=1_000, help="rows of the text table (%(default)s)")
    parser.add_argument("--chunk-rows", type=int, default=16_384, help="precomputed table: rows per chunk")
    parser.add_argument("--text-chunk-rows", type=int, default=256, help="text table: rows per chunk")
    parser.add_argument("--concurrency", type=int, default=None, help="Ray workers (default: 2 per server)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--work-dir", type=Path, default=BENCH_WORK_DIR)
    parser.add_argument("--results-dir", type=Path, default=None, help="where the JSON goes (default: bench/results)")
    args = parser.parse_args(argv)
    result = bench_ray_table(
        load_task(args.task), args.repo, args.rows, args.text_rows, args.chunk_rows, args.text_chunk_rows,
        args.concurrency, args.data_dir, args.work_dir,
    )  # fmt: skip
    print_result(result)
    import json

    print(json.dumps(result, indent=2))
    print(f"saved {save_result('ray-table', result, args.results_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
