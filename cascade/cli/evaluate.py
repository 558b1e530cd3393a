"""``cascade eval``: a labelled table through a served task, scored against its label column.

The rows go through the same job as ``cascade filter`` (:func:`cascade.tables.local.run_filter`, into a temporary
Parquet file), so the answers, the per-row errors and the speed are what ``filter`` gives on that table. The label
column may hold the task's label names or label indices (0-based, as in the task's ``labels``), even mixed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cascade import contract
from cascade.errors import ConfigError, InvalidInput
from cascade.llm.cost_report import cost_lines
from cascade.tables.cells import check_text_column
from cascade.tables.job import (
    ERROR_COLUMN,
    LABEL_COLUMN,
    RESULT_COLUMNS,
    TIER_COLUMN,
    FilterOptions,
    embedding_tiers_only,
)
from cascade.tables.local import run_filter
from cascade.tables.row_requests import DEFAULT_BACKOFF_S, first_contact
from cascade.tables.table_io import read_batches, table_schema

#: Keys every report has (the benchmarks read them).
REQUIRED_KEYS = ("rows", "accuracy", "llm_share", "tiers", "wall_s")
#: What ``cascade eval --teacher`` keeps of the table scored by the teacher alone (``--min-tier llm_large``).
TEACHER_KEYS = ("accuracy", "correct", "answered", "errors", "wall_s", "rows_per_s")


def _label_index(value, labels: list[str]) -> int | None:
    """The label index a cell means: a label name first, else an index in range; ``None`` when neither."""
    if isinstance(value, str):
        if value in labels:
            return labels.index(value)
        value = value.strip()
        if value in labels:
            return labels.index(value)
        if value.lstrip("-").isdigit():
            value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return value
    return None


def gold_indices(column: pa.ChunkedArray | pa.Array, labels: list[str], where: str) -> np.ndarray:
    """Each row's label index; an empty cell or a value that is neither a label nor an index is an error."""
    encoded = pc.dictionary_encode(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    if encoded.null_count:
        row = int(np.flatnonzero(encoded.is_null().to_numpy(zero_copy_only=False))[0])
        raise InvalidInput(f"{where}: row {row} has no label (an empty cell)")
    values = encoded.dictionary.to_pylist()
    mapped = [_label_index(v, labels) for v in values]
    unknown = [
        v if len(str(v)) <= 40 else str(v)[:37] + "..." for v, i in zip(values, mapped, strict=True) if i is None
    ]
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise InvalidInput(
            f"{where}: unknown label value(s) {unknown[:5]}{more}: "
            f"neither a label of the task ({labels}) nor a label index 0..{len(labels) - 1}"
        )
    return np.array(mapped, np.int64)[encoded.indices.to_numpy()]


def _free_prefix(names: list[str]) -> str:
    prefix = "eval_"
    while any(prefix + c in names for c in RESULT_COLUMNS):
        prefix = "_" + prefix
    return prefix


def evaluate_table(
    task: str,
    table: str | Path,
    label_column: str,
    url: str,
    max_tier: str | int | None = None,
    min_tier: str | int | None = None,
    *,
    text_column: str = "text",
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S,
    quiet: bool = True,
    work_dir: str | Path | None = None,
    metrics_url: str | None = None,
    llm_prices: dict | None = None,
) -> dict:
    """Run ``table`` through the served ``task`` and score its answers against ``label_column``.

    Returns ``rows``, ``accuracy`` (over the answered rows; ``None`` when none was), ``answered``, ``errors``
    (rows that got a per-row error: counted, never dropped; ``error_examples`` shows a few), ``tiers`` (tier name ->
    rows it answered), ``tier_accuracy``, ``llm_share`` (of the answered rows), ``degraded``, ``wall_s`` (the job),
    ``rows_per_s``, ``cost`` (the LLM tiers' tokens and cost beside all rows on the large tier:
    ``cascade.llm.cost_report``) and the arguments.
    """
    from cascade_client import CascadeClient

    table = Path(table)
    schema, _ = table_schema(table, text_column)  # a missing table or an unknown format fails here
    if label_column not in schema.names:
        raise ConfigError(f"table {table}: no label column {label_column!r} (columns: {schema.names})")
    check_text_column(schema, text_column, table)
    column = pa.chunked_array(
        [b.column(0) for b in read_batches(table, text_column, [label_column])], schema.field(label_column).type
    )
    if len(column) == 0:
        raise InvalidInput(f"table {table} has no rows")
    with CascadeClient(url) as client:
        gate = first_contact(lambda: client.task_info(task), url, backoff_s)
    labels = list(gate.labels)
    gold = gold_indices(column, labels, f"table {table}, label column {label_column!r}")

    prefix = _free_prefix(schema.names)
    options = FilterOptions(task=task, text_column=text_column, max_tier=max_tier, min_tier=min_tier, prefix=prefix)
    embedding_tiers_only(gate, options)  # an unknown --max-tier/--min-tier fails here, not on every row
    with tempfile.TemporaryDirectory(prefix="cascade-eval-", dir=work_dir) as tmp:
        out = Path(tmp) / "answers.parquet"
        summary = run_filter(
            table, out, options, url, backoff_s=backoff_s, llm_probe_rows=0, quiet=quiet, metrics_url=metrics_url,
            llm_prices=llm_prices,
        )  # fmt: skip
        import pyarrow.parquet as pq

        names = [prefix + c for c in (LABEL_COLUMN, TIER_COLUMN, ERROR_COLUMN)]
        answers = pq.read_table(out, columns=names)
    if answers.num_rows != len(gold):
        raise ConfigError(f"the filter job gave {answers.num_rows} rows for {len(gold)} labels")  # never expected
    index = {name: i for i, name in enumerate(labels)}
    predicted = np.array([index.get(v, -1) for v in answers.column(names[0]).to_pylist()], np.int64)
    tier_col = answers.column(names[1])
    answered = ~tier_col.is_null().to_numpy(zero_copy_only=False)
    tier = tier_col.fill_null(-1).to_numpy()
    correct = answered & (predicted == gold)
    tiers, tier_accuracy = {}, {}
    for t in sorted(set(tier[answered].tolist())):
        rows_t = answered & (tier == t)
        name = contract.TIER_NAMES.get(t, str(t))
        tiers[name] = int(rows_t.sum())
        tier_accuracy[name] = float(correct[rows_t].mean())
    n_answered = int(answered.sum())
    llm = sum(n for name, n in tiers.items() if contract.TIER_BY_NAME.get(name) in contract.LLM_TIERS)
    messages = answers.column(names[2]).to_pylist()
    examples = [{"row": i, "error": m} for i, m in enumerate(messages) if m is not None][:5]
    return {
        "task": task,
        "table": str(table),
        "label_column": label_column,
        "url": url,
        "max_tier": max_tier,
        "min_tier": min_tier,
        "rows": len(gold),
        "answered": n_answered,
        "errors": len(gold) - n_answered,
        "error_examples": examples,
        "correct": int(correct.sum()),
        "accuracy": float(correct.sum() / n_answered) if n_answered else None,
        "tiers": tiers,
        "tier_accuracy": tier_accuracy,
        "llm_share": llm / n_answered if n_answered else None,
        "degraded": summary.degraded_rows,
        "wall_s": summary.wall_s,
        "rows_per_s": len(gold) / summary.wall_s if summary.wall_s > 0 else 0.0,
        "labels": labels,
        "cost": (summary.cost or {}).get("llm"),
    }


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def print_report(report: dict) -> None:
    """A short human summary: accuracy, LLM share and speed, then one line per tier."""
    limits = ", ".join(
        f"--{k.replace('_', '-')} {report[k]}" for k in ("max_tier", "min_tier") if report[k] is not None
    )
    acc = report["accuracy"]
    print(
        f"eval {report['task']} on {report['table']} (label column {report['label_column']!r}"
        + (f"; {limits}" if limits else "")
        + f"): {report['rows']:,} rows in {report['wall_s']:.1f} s ({report['rows_per_s']:,.1f} rows/s)"
    )
    print(
        f"accuracy {'-' if acc is None else f'{acc:.4f}'} ({report['correct']:,}/{report['answered']:,} answered rows)"
        f"; LLM share {_share(report['llm_share'])}"
    )
    if report.get("teacher") is not None:
        teacher = report["teacher"]
        ours, theirs = ("-" if a is None else f"{a:.4f}" for a in (report["accuracy"], teacher["accuracy"]))
        print(
            f"side by side: cascade {ours}, teacher alone (llm_large on every row) {theirs} ({teacher['correct']:,}/"
            f"{teacher['answered']:,}; {teacher['rows_per_s']:,.2f} rows/s)"
        )
    for line in cost_lines(report.get("cost")):
        print(line)
    print(f"{'tier':<10} {'rows':>9} {'share':>7} {'accuracy':>9}")
    for name, n in report["tiers"].items():
        share = n / report["answered"] if report["answered"] else None
        print(f"{name:<10} {n:>9,} {_share(share):>7} {report['tier_accuracy'][name]:>9.4f}")
    if report["errors"]:
        first = report["error_examples"][0]
        print(
            f"{report['errors']:,} row(s) could not be processed and are not in the accuracy "
            f"(first: row {first['row']}: {first['error']})"
        )


def save_report(report: dict, path: Path | None) -> None:
    if path is not None:
        Path(path).write_text(json.dumps(report, indent=2))
