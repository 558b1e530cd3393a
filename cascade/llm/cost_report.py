"""What a run cost, read from the server's own counters: the LLM tiers' tokens, CPU-seconds and money
(:mod:`cascade.llm.meter`) and the rows each served (Triton's ``nv_inference_count``), scraped from ``/metrics``
before and after the run (:func:`scrape`), and what the same rows would have cost had every one gone to the large
tier (:func:`cost_report`): the cascade's point is the ratio.

The all-LLM figure is the large tier's cost per row, as measured in this run (else since the server started),
times the run's rows. No Triton import here.
"""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

from cascade import contract
from cascade.llm.meter import COST, CPU_SECONDS, DIRECTION_IN, DIRECTION_OUT, LABEL_DIRECTION, LABEL_MODEL, TOKENS

INFERENCES = "nv_inference_count"
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
LLM_MODELS = tuple(contract.TIER_NAMES[t] for t in contract.LLM_TIERS)


def metrics_url_for(grpc_url: str) -> str | None:
    """The ``/metrics`` address beside a gRPC address on Triton's default port (8001: metrics on 8002); None for
    another port, whose metrics port cannot be guessed (give it: ``--metrics-url``)."""
    parts = urlsplit("//" + grpc_url.split("://")[-1])
    if (parts.port or contract.DEFAULT_GRPC_PORT) != contract.DEFAULT_GRPC_PORT:
        return None
    return f"http://{parts.hostname or '127.0.0.1'}:{contract.DEFAULT_METRICS_PORT}/metrics"


@dataclass
class LLMUse:
    """One LLM tier's counters (or their difference between two scrapes)."""

    rows: float = 0.0
    tokens_in: float = 0.0
    tokens_out: float = 0.0
    cpu_s: float = 0.0
    cost: float = 0.0

    def __sub__(self, other: LLMUse) -> LLMUse:
        return LLMUse(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    def per_row(self) -> LLMUse:
        return LLMUse(*(getattr(self, f.name) / self.rows if self.rows else 0.0 for f in fields(self)))


def parse(text: str) -> dict[str, LLMUse]:
    """The LLM tiers' counters in a Prometheus text exposition, by model."""
    use = {m: LLMUse() for m in LLM_MODELS}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match or match.group(1) not in (TOKENS, COST, CPU_SECONDS, INFERENCES):
            continue
        name, labels, value = match.group(1), dict(_LABEL.findall(match.group(2) or "")), float(match.group(3))
        this = use.get(labels.get(LABEL_MODEL, ""))
        if this is None:
            continue
        if name == INFERENCES:
            this.rows += value
        elif name == TOKENS:
            direction = labels.get(LABEL_DIRECTION)
            if direction == DIRECTION_IN:
                this.tokens_in += value
            elif direction == DIRECTION_OUT:
                this.tokens_out += value
        elif name == CPU_SECONDS:
            this.cpu_s += value
        else:
            this.cost += value
    return use


def scrape(metrics_url: str | None, timeout_s: float = 5.0) -> dict[str, LLMUse] | None:
    """The counters now, or None when the metrics endpoint does not answer (the report then says so)."""
    if not metrics_url:
        return None
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:  # noqa: S310 - a URL the user gave
            return parse(response.read().decode("utf-8", errors="replace"))
    except OSError:
        return None


def cost_report(
    before: dict[str, LLMUse] | None,
    after: dict[str, LLMUse] | None,
    rows: int,
    large: str = LLM_MODELS[-1],
    since_start: dict[str, LLMUse] | None = None,
    prices: dict | None = None,
) -> dict:
    """The run's LLM use and cost (``after - before``) beside the same ``rows`` all sent to ``large``, at its cost
    per row in this run, else in ``since_start`` (a later scrape: the server's whole life, a probe included).
    ``prices`` (model name: ``cascade.llm.meter.Price``) price the counters here, in place of the served tiers' own
    prices (a run priced after the fact)."""
    if before is None or after is None:
        return {"note": "the server's /metrics did not answer: no token or cost counts (pass --metrics-url)"}
    if prices:
        before, after = _priced(before, prices), _priced(after, prices)
        since_start = _priced(since_start, prices) if since_start else None
    run = {m: after[m] - before.get(m, LLMUse()) for m in after}
    large_run = run.get(large, LLMUse())
    basis, source = large_run, "this run"
    if basis.rows <= 0:
        basis, source = (since_start or after).get(large, LLMUse()), "since the server started"
    per_row = basis.per_row()
    total = LLMUse(*(sum(getattr(u, f.name) for u in run.values()) for f in fields(LLMUse)))
    all_llm = LLMUse(
        rows=rows, tokens_in=per_row.tokens_in * rows, tokens_out=per_row.tokens_out * rows,
        cpu_s=per_row.cpu_s * rows, cost=per_row.cost * rows,
    )  # fmt: skip
    report = {
        "rows": rows,
        "tiers": {m: vars(u) for m, u in run.items() if u.rows or u.tokens_in or u.cost},
        "run": vars(total),
        "all_llm": vars(all_llm) if basis.rows > 0 else None,
        "all_llm_basis": f"{large} per row over {basis.rows:.0f} rows ({source})" if basis.rows > 0 else None,
        "priced": total.cost > 0 or per_row.cost > 0,
    }
    if basis.rows > 0:
        report["tokens_ratio"] = all_llm.tokens_in / total.tokens_in if total.tokens_in else None
        report["cost_ratio"] = all_llm.cost / total.cost if total.cost else None
        report["saving"] = all_llm.cost - total.cost
    return report


def _priced(use: dict[str, LLMUse], prices: dict) -> dict[str, LLMUse]:
    out = dict(use)
    for model, price in prices.items():
        if model in out:
            u = out[model]
            out[model] = LLMUse(
                u.rows, u.tokens_in, u.tokens_out, u.cpu_s, price.cost(u.tokens_in, u.tokens_out, u.cpu_s)
            )
    return out


def cost_lines(report: dict | None) -> list[str]:
    """The report in two or three lines of text for the CLI."""
    if not report:
        return []
    if "note" in report:
        return [f"cost: {report['note']}"]
    run, all_llm = report["run"], report.get("all_llm")
    lines = [
        f"cost: this run's LLM tiers read {run['tokens_in']:,.0f} tokens and wrote {run['tokens_out']:,.0f}"
        + (f", {run['cpu_s']:,.1f} CPU-s" if run["cpu_s"] else "")
        + (f", cost {run['cost']:,.4f}" if report["priced"] else " (no price set: --llm-price)")
    ]
    if all_llm is not None:
        ratio = report.get("cost_ratio") if report["priced"] else report.get("tokens_ratio")
        what = f"cost {all_llm['cost']:,.4f}" if report["priced"] else f"{all_llm['tokens_in']:,.0f} tokens in"
        lines.append(
            f"      all {report['rows']:,} rows on the large tier: {what}"
            + (f", {ratio:,.1f}x this run" if ratio else "")
            + f" ({report['all_llm_basis']})"
        )
    return lines
