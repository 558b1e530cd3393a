"""What an LLM tier costs: its price (:class:`Price`, per million tokens in and out, or per CPU-hour for a local
tier) and its Prometheus counters (:class:`Meter`): tokens by direction, CPU-seconds, money and a remote endpoint's
retries, labelled by the tier's model name. The cost reports of ``cascade filter``, ``eval`` and ``demo`` read the
same counters back from ``/metrics`` (:mod:`cascade.ops.cost`).

No Triton import: the LLM models' ``model.py`` pass their ``triton_python_backend_utils`` module in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cascade import contract
from cascade.errors import ConfigError

TOKENS = "cascade_llm_tokens_total"
COST = "cascade_llm_cost_total"
CPU_SECONDS = "cascade_llm_cpu_seconds_total"
RETRIES = "cascade_llm_remote_retries_total"
LABEL_MODEL, LABEL_DIRECTION = "model", "direction"
DIRECTION_IN, DIRECTION_OUT = "in", "out"
FAMILIES = {
    TOKENS: "Tokens an LLM tier read (in) and generated (out)",
    COST: "What an LLM tier cost, in the currency of its price (tokens or CPU-seconds times the price)",
    CPU_SECONDS: "CPU-seconds an in-process LLM tier used",
    RETRIES: "HTTP calls to a remote LLM endpoint tried again (429, 5xx, timeouts)",
}


@dataclass(frozen=True)
class Price:
    """A tier's price: per million tokens read and generated, and per CPU-hour (an in-process tier's)."""

    per_mtok_in: float = 0.0
    per_mtok_out: float = 0.0
    per_cpu_hour: float = 0.0

    def __post_init__(self) -> None:
        if min(self.per_mtok_in, self.per_mtok_out, self.per_cpu_hour) < 0:
            raise ConfigError(f"prices cannot be negative: {self}")

    def cost(self, tokens_in: float, tokens_out: float, cpu_s: float) -> float:
        return (tokens_in * self.per_mtok_in + tokens_out * self.per_mtok_out) / 1e6 + cpu_s * self.per_cpu_hour / 3600

    @classmethod
    def parse(cls, text: str) -> Price:
        """``IN/OUT`` per million tokens (``3/15``), ``IN`` (both), or ``cpu:X`` per CPU-hour."""
        try:
            if text.startswith("cpu:"):
                return cls(per_cpu_hour=float(text[4:]))
            tin, _, tout = text.partition("/")
            return cls(per_mtok_in=float(tin), per_mtok_out=float(tout or tin))
        except ValueError:
            raise ConfigError(
                f"price {text!r}: write IN/OUT per million tokens (e.g. 0.6/2.4), or cpu:X per CPU-hour"
            ) from None

    def parameters(self) -> dict[str, str]:
        return {
            contract.CFG_PRICE_IN: repr(self.per_mtok_in),
            contract.CFG_PRICE_OUT: repr(self.per_mtok_out),
            contract.CFG_PRICE_CPU_HOUR: repr(self.per_cpu_hour),
        }

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> Price:
        def number(key: str) -> float:
            try:
                return float(params.get(key, "0") or 0)
            except ValueError:
                raise ConfigError(f"parameter {key}={params[key]!r} is not a number") from None

        return cls(number(contract.CFG_PRICE_IN), number(contract.CFG_PRICE_OUT), number(contract.CFG_PRICE_CPU_HOUR))


class Meter:
    """One LLM tier model's counters; :meth:`record` adds one call's use (a metric call per counter that moved)."""

    def __init__(self, pb_utils: Any, model: str, price: Price) -> None:
        self.model, self.price = model, price
        family = {
            name: pb_utils.MetricFamily(name=name, description=text, kind=pb_utils.MetricFamily.COUNTER)
            for name, text in FAMILIES.items()
        }
        self._families = family  # a family must outlive its metrics (Triton refuses increments otherwise)
        labels = {LABEL_MODEL: model}
        self._metrics = {
            (TOKENS, DIRECTION_IN): family[TOKENS].Metric(labels=labels | {LABEL_DIRECTION: DIRECTION_IN}),
            (TOKENS, DIRECTION_OUT): family[TOKENS].Metric(labels=labels | {LABEL_DIRECTION: DIRECTION_OUT}),
            (COST, None): family[COST].Metric(labels=labels),
            (CPU_SECONDS, None): family[CPU_SECONDS].Metric(labels=labels),
            (RETRIES, None): family[RETRIES].Metric(labels=labels),
        }

    def record(self, tokens_in: int = 0, tokens_out: int = 0, cpu_s: float = 0.0, retries: int = 0) -> None:
        moves = {
            (TOKENS, DIRECTION_IN): tokens_in,
            (TOKENS, DIRECTION_OUT): tokens_out,
            (CPU_SECONDS, None): cpu_s,
            (RETRIES, None): retries,
            (COST, None): self.price.cost(tokens_in, tokens_out, cpu_s),
        }
        for key, value in moves.items():
            if value > 0:
                self._metrics[key].increment(float(value))
