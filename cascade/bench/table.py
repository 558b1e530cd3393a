"""``cascade bench table``: the AI.IF job head to head with calling the large tier on every row.

One server, one task, rows with gold labels (the task's held-out split), in one run:

- (a) the cascade over a million-row table of precomputed embeddings (``make-table`` from the embedded
  held-out rows), kept on the embedding tiers (``max_tier``): the paper's proxy. Arrow IPC and Parquet input.
- (b) the same cascade from text (the embedder in the loop) over ``--text-rows`` rows.
- (c) the large tier on every row of a sample (``--llm-rows``), through the gate (min_tier = max_tier = 4).
- the full cascade (escalating to the LLM tiers) on the same sample, for its LLM share and accuracy.
- (d) accuracy against gold: (a) on all rows and on the sample rows' exact copies, (c) on the sample.
- float16 embeddings against float32 on the held-out rows; raw TCP loopback bandwidth for the wire limit.

Results: ``bench/results/table-<task>-<time>.json``; intermediate tables in ``bench/work/<task>/``.
"""

from __future__ import annotations

import argparse
import platform
import socket
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cascade import contract
from cascade.bench.gate import RESULTS_DIR, _cpus, save
from cascade.errors import ConfigError
from cascade.paths import BENCH_WORK_DIR, DEFAULT_REPO
from cascade.tables.embed_jobs import make_table, run_embed
from cascade.tables.job import FilterOptions, JobSummary
from cascade.tables.local import run_filter
from cascade.tables.table_io import read_batches
from cascade.tasks import TaskSpec, load_split, load_task

GOLD = "gold"


def loopback_bandwidth(total_bytes: int = 1 << 30, chunk: int = 1 << 20) -> float:
    """Bytes per second through a TCP connection over 127.0.0.1 (a sender thread, this thread receiving)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    payload = b"\0" * chunk

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            for _ in range(total_bytes // chunk):
                s.sendall(payload)

    sender = threading.Thread(target=send)
    start = time.perf_counter()
    sender.start()
    conn, _ = server.accept()
    got = 0
    buffer = bytearray(chunk)
    with conn:
        while True:
            n = conn.recv_into(buffer)
            if not n:
                break
            got += n
    sender.join()
    server.close()
    return got / (time.perf_counter() - start)


def _labels_of(out: Path, prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    table = pa.Table.from_batches(list(read_batches(out)))
    label = np.array(table.column(prefix + "label").to_pylist(), dtype=object)
    gold = np.array(table.column(GOLD).to_pylist(), dtype=object)
    copy = table.column("copy").to_numpy() if "copy" in table.column_names else None
    return label, gold, copy


def _accuracy(label: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(label == gold)) if len(label) else float("nan")


def _row(summary: JobSummary) -> dict:
    return {
        "rows": summary.rows,
        "wall_s": round(summary.wall_s, 3),
        "rows_per_s": round(summary.rows_per_s, 1),
        "tiers": summary.tiers,
        "llm_share": summary.llm_share,
        "error_rows": summary.error_rows,
    }


def bench_table(
    task: TaskSpec,
    repo: Path,
    rows: int = 1_000_000,
    text_rows: int = 2_000,
    llm_rows: int = 300,
    data_dir: str | None = None,
    work: Path = BENCH_WORK_DIR,
    seed: int = 0,
) -> dict:
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports
    from cascade_client import CascadeClient

    work = Path(work) / task.name
    work.mkdir(parents=True, exist_ok=True)
    texts, gold_index = load_split(task, "validation", data_dir)
    gold = [task.labels[i] for i in gold_index]
    if llm_rows > len(texts):
        raise ConfigError(f"--llm-rows {llm_rows} is more than the {len(texts)} held-out rows")
    source = work / "source.parquet"
    pq.write_table(pa.table({"text": texts, GOLD: gold}), source)
    prefix = "ai_"
    result: dict = {
        "benchmark": "table",
        "task": task.name,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": _cpus(), "platform": platform.platform(), "python": platform.python_version()},
        "source_rows": len(texts),
        "note": "server and client share the machine's cores; gRPC over loopback",
    }
    http, grpc, metrics = free_ports(3)
    opts = ServerOptions(repository=Path(repo), http_port=http, grpc_port=grpc, metrics_port=metrics)
    with TritonServer(opts) as server:
        url = server.grpc_url
        with CascadeClient(url) as client:
            gate = client.task_info(task.name)
        embedding_tiers = [t for t in gate.tiers if t in contract.EMBEDDING_TIERS]
        if not embedding_tiers or contract.TIER_LLM_LARGE not in gate.tiers:
            raise ConfigError(
                f"task {task.name} enables tiers {list(gate.tiers)}: the benchmark needs an embedding tier "
                "and llm_large"
            )
        cap = contract.TIER_NAMES[max(embedding_tiers)]
        result["gate"] = {"tiers": [contract.TIER_NAMES[t] for t in gate.tiers], "cap_for_proxy": cap}
        capped = FilterOptions(task=task.name, max_tier=cap, prefix=prefix)

        # Embeddings of the held-out rows (float32, and float16 for the accuracy comparison).
        emb32, emb16 = work / "source_emb.parquet", work / "source_emb16.parquet"
        t = time.perf_counter()
        embed = run_embed(source, emb32, url, restart=True, quiet=True)
        result["embed"] = {"rows": embed.rows, "rows_per_s": round(embed.rows_per_s, 1)}
        # float16 storage is a cast of the same vectors (what `cascade embed --float16` stores).
        half = pq.read_table(emb32)
        column = half.schema.get_field_index("embedding")
        dim = half.schema.field(column).type.list_size  # the served embedder's width
        field = half.schema.field(column).with_type(pa.list_(pa.float16(), dim))
        pq.write_table(half.set_column(column, field, half.column(column).cast(field.type)), emb16)
        print(f"[bench] embedded {embed.rows} rows at {embed.rows_per_s:.0f} rows/s ({time.perf_counter() - t:.0f} s)")

        # float16 against float32 on the held-out rows.
        f32 = run_filter(emb32, work / "f32.parquet", capped, url, restart=True, llm_probe_rows=0, quiet=True)
        run_filter(emb16, work / "f16.parquet", capped, url, restart=True, llm_probe_rows=0, quiet=True)
        l32, g, _ = _labels_of(work / "f32.parquet", prefix)
        l16, _, _ = _labels_of(work / "f16.parquet", prefix)
        result["float16"] = {
            "rows": f32.rows,
            "label_agreement_with_float32": float(np.mean(l32 == l16)),
            "accuracy_float32": _accuracy(l32, g),
            "accuracy_float16": _accuracy(l16, g),
            "bytes_per_row": {"float32": 4 * dim, "float16": 2 * dim},
        }

        # (a) a million rows of precomputed embeddings, Arrow IPC and Parquet.
        big = {}
        for suffix in (".arrow", ".parquet"):
            path = work / f"big-{rows}{suffix}"
            if not path.is_file():
                info = make_table(emb32, path, rows, seed=seed)
                print(f"[bench] make-table {path.name}: {info['seconds']:.0f} s")
            big[suffix] = path
        a_runs = {}
        for suffix, path in big.items():
            out = work / f"a{suffix}"
            a_runs[suffix] = run_filter(path, out, capped, url, restart=True, llm_probe_rows=0, quiet=True)
            print(f"[bench] (a) {path.name}: {a_runs[suffix].rows_per_s:,.0f} rows/s")
        label_a, gold_a, copy_a = _labels_of(work / "a.arrow", prefix)
        a = a_runs[".arrow"]
        result["a_precomputed"] = {
            "arrow_ipc": _row(a),
            "parquet": _row(a_runs[".parquet"]),
            "accuracy_vs_gold": _accuracy(label_a, gold_a),
            "accuracy_vs_gold_exact_copies": _accuracy(label_a[copy_a == 0], gold_a[copy_a == 0]),
        }

        # (b) from text: the embedder in the loop.
        text_table = work / f"text-{text_rows}.parquet"
        reps = np.arange(text_rows) % len(texts)
        pq.write_table(pa.table({"text": [texts[i] for i in reps], GOLD: [gold[i] for i in reps]}), text_table)
        b = run_filter(text_table, work / "b.parquet", capped, url, restart=True, llm_probe_rows=0, quiet=True)
        label_b, gold_b, _ = _labels_of(work / "b.parquet", prefix)
        result["b_from_text"] = _row(b) | {"accuracy_vs_gold": _accuracy(label_b, gold_b)}
        print(f"[bench] (b) from text: {b.rows_per_s:,.0f} rows/s")

        # (c) the large tier on every row of a sample; the full cascade on the same rows.
        pick = np.sort(np.random.default_rng(seed).choice(len(texts), size=llm_rows, replace=False))
        sample = work / f"sample-{llm_rows}.parquet"
        pq.write_table(pa.table({"text": [texts[i] for i in pick], GOLD: [gold[i] for i in pick]}), sample)
        with CascadeClient(url) as client:
            before = client.model_stats()
        large_only = replace(capped, min_tier="llm_large", max_tier="llm_large")
        c = run_filter(sample, work / "c.parquet", large_only, url, restart=True, llm_probe_rows=0, quiet=True)
        with CascadeClient(url) as client:
            stats = (
                client.model_stats()[contract.TIER_NAMES[contract.TIER_LLM_LARGE]]
                - before[contract.TIER_NAMES[contract.TIER_LLM_LARGE]]
            )
        label_c, gold_c, _ = _labels_of(work / "c.parquet", prefix)
        llm_s_per_row = stats.compute_s / max(stats.rows, 1)
        result["c_llm_every_row"] = _row(c) | {
            "accuracy_vs_gold": _accuracy(label_c, gold_c),
            "llm_large_compute_s_per_row": llm_s_per_row,
            "extrapolated_s_for_table": rows / c.rows_per_s,
        }
        print(f"[bench] (c) llm_large on every row: {c.rows_per_s:.1f} rows/s")
        full = FilterOptions(task=task.name, prefix=prefix)
        f = run_filter(sample, work / "full.parquet", full, url, restart=True, llm_probe_rows=0, quiet=True)
        label_f, gold_f, _ = _labels_of(work / "full.parquet", prefix)
        result["full_cascade_on_sample"] = _row(f) | {"accuracy_vs_gold": _accuracy(label_f, gold_f)}

    # (d) quality on the same rows, and the ratios.
    sample_rows = set(pick.tolist())
    a_table = pa.Table.from_batches(list(read_batches(work / "a.arrow")))
    src = a_table.column("source_row").to_numpy()
    on_sample = (copy_a == 0) & np.isin(src, list(sample_rows))
    acc_a_sample = _accuracy(label_a[on_sample], gold_a[on_sample])
    acc_c = result["c_llm_every_row"]["accuracy_vs_gold"]
    share = result["full_cascade_on_sample"]["llm_share"] or 0.0
    result["d_quality"] = {
        "sample_rows": int(on_sample.sum()),
        "accuracy_a_on_sample": acc_a_sample,
        "accuracy_c_on_sample": acc_c,
        "a_over_c": acc_a_sample / acc_c if acc_c else None,
        "accuracy_full_cascade_on_sample": result["full_cascade_on_sample"]["accuracy_vs_gold"],
    }
    wire = 4 * dim  # float32 on the wire
    bandwidth = loopback_bandwidth()
    result["wire"] = {
        "embedding_bytes_per_row": wire,
        "loopback_bytes_per_s": bandwidth,
        "loopback_rows_per_s_limit": bandwidth / wire,
        "a_share_of_limit": a.rows_per_s / (bandwidth / wire),
    }
    result["ratios"] = {
        "a_over_c_wall": a.rows_per_s / c.rows_per_s,
        "a_parquet_over_c_wall": a_runs[".parquet"].rows_per_s / c.rows_per_s,
        "b_over_c_wall": b.rows_per_s / c.rows_per_s,
        # LLM-seconds: the proxy (a, b) spends none; the full cascade spends its LLM share of (c)'s.
        "llm_seconds_per_row": {"a": 0.0, "b": 0.0, "c": llm_s_per_row, "full_cascade": share * llm_s_per_row},
        "c_over_full_cascade_llm_seconds": (1 / share) if share else None,
    }
    result["targets"] = {
        "a_rows_per_s_200k": a.rows_per_s >= 200_000,
        "a_over_c_300x": result["ratios"]["a_over_c_wall"] >= 300,
        "a_accuracy_99pct_of_c": bool(acc_c and acc_a_sample >= 0.99 * acc_c),
    }
    return result


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"table job, task {result['task']} ({result['source_rows']} held-out rows with gold labels)")
    for column in ("run", "rows", "rows/s", "accuracy vs gold", "LLM share"):
        table.add_column(column, justify="right")
    a = result["a_precomputed"]
    rows = [
        ("(a) precomputed, Arrow IPC", a["arrow_ipc"], a["accuracy_vs_gold"]),
        ("(a) precomputed, Parquet", a["parquet"], a["accuracy_vs_gold"]),
        ("(b) from text", result["b_from_text"], result["b_from_text"]["accuracy_vs_gold"]),
        ("(c) llm_large every row", result["c_llm_every_row"], result["c_llm_every_row"]["accuracy_vs_gold"]),
        (
            "full cascade, sample",
            result["full_cascade_on_sample"],
            result["full_cascade_on_sample"]["accuracy_vs_gold"],
        ),
    ]
    for name, row, accuracy in rows:
        share = "" if row["llm_share"] is None else f"{row['llm_share']:.1%}"
        table.add_row(name, f"{row['rows']:,}", f"{row['rows_per_s']:,.1f}", f"{accuracy:.3f}", share)
    console.print(table)
    r, d, w = result["ratios"], result["d_quality"], result["wire"]
    console.print(
        f"(a)/(c) {r['a_over_c_wall']:,.0f}x, (a, Parquet)/(c) {r['a_parquet_over_c_wall']:,.0f}x, "
        f"(b)/(c) {r['b_over_c_wall']:,.0f}x in wall time; on the sample (a) {d['accuracy_a_on_sample']:.3f} "
        f"vs (c) {d['accuracy_c_on_sample']:.3f} ({d['a_over_c']:.1%})"
    )
    console.print(
        f"wire: {w['embedding_bytes_per_row']} B/row; loopback {w['loopback_bytes_per_s'] / 1e9:.2f} GB/s = "
        f"{w['loopback_rows_per_s_limit']:,.0f} rows/s; (a) reaches {w['a_share_of_limit']:.1%} of it"
    )
    f16 = result["float16"]
    console.print(
        f"float16 embeddings: labels agree with float32 on {f16['label_agreement_with_float32']:.2%} of "
        f"{f16['rows']} rows; accuracy {f16['accuracy_float16']:.4f} vs {f16['accuracy_float32']:.4f}"
    )
    console.print(f"targets: {result['targets']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cascade bench table", description=__doc__)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--text-rows", type=int, default=2_000)
    parser.add_argument("--llm-rows", type=int, default=300)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--work-dir", type=Path, default=BENCH_WORK_DIR)
    args = parser.parse_args(argv)
    result = bench_table(
        load_task(args.task), args.repo, args.rows, args.text_rows, args.llm_rows, args.data_dir, args.work_dir
    )
    print_table(result)
    print(f"saved {save(result, f'table-{args.task}')}")
    return 0


__all__ = ["RESULTS_DIR", "bench_table", "loopback_bandwidth", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
