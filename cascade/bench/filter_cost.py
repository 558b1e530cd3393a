"""What ``cascade filter`` over 10,000 SST-2 rows cost, against the same rows all on the large tier
(``make bench-cost``).

``python -m cascade.bench.filter_cost [--repo model_repository] [--task sst2] [--rows 10000] [--price cpu:0.04]``

The task must be built in ``--repo`` (``make demo`` builds sst2). The rows are SST-2 training rows drawn uniformly
with seed 1; some may be among the 1,000 the build's teacher labelled (a cost figure, not an accuracy one). A server
starts on the repository; the job runs through
:func:`cascade.tables.local.run_filter`, its cost report (:mod:`cascade.llm.cost_report`) from the server's own
counters, ``llm_large`` priced at ``--price`` per CPU-hour (stated in the command: an illustrative price, the ratio
does not depend on it when only the large tier is priced). JSON goes to ``bench/results/filter-cost-<time>.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cascade.paths import DEFAULT_REPO
from cascade.results import command_line, now_iso, save_result


def main(argv: list[str] | None = None) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cascade.llm.cost_report import cost_lines
    from cascade.llm.meter import Price
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports
    from cascade.tables.job import FilterOptions
    from cascade.tables.local import run_filter
    from cascade.tasks import load_split, load_task

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    p.add_argument("--task", default="sst2")
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--price", default="cpu:0.04", help="llm_large's price (cascade.llm.meter.Price.parse)")
    args = p.parse_args(argv)

    task = load_task(args.task)
    texts, gold = load_split(task, "train")
    order = np.random.default_rng(1).permutation(len(texts))[: args.rows]
    price = Price.parse(args.price)
    http, grpc, metrics = free_ports(3)
    opts = ServerOptions(repository=args.repo, http_port=http, grpc_port=grpc, metrics_port=metrics)
    with tempfile.TemporaryDirectory(prefix="cascade-cost-") as tmp:
        table = Path(tmp) / "rows.parquet"
        pq.write_table(pa.table({"text": [texts[i] for i in order]}), table)
        with TritonServer(opts) as server:
            start = time.perf_counter()
            summary = run_filter(
                table, Path(tmp) / "out.parquet", FilterOptions(task=task.name), server.grpc_url,
                llm_probe_rows=0, metrics_url=server.metrics_url, llm_prices={"llm_large": price},
            )  # fmt: skip
            wall = time.perf_counter() - start
    cost = summary.cost["llm"]
    for line in cost_lines(cost):
        print(line)
    payload = {
        "benchmark": "filter-cost",
        "when": now_iso(),
        "command": command_line(prog="python -m cascade.bench.filter_cost"),
        "task": task.name,
        "rows": args.rows,
        "price": {"llm_large": vars(price)},
        "wall_s": wall,
        "tiers": summary.tiers,
        "llm_share": summary.llm_share,
        "degraded_rows": summary.degraded_rows,
        "error_rows": summary.error_rows,
        "cost": cost,
    }
    print(f"saved {save_result('filter-cost', payload)}")
    return payload


if __name__ == "__main__":
    main()
