"""The gate's configuration (from its config.pbtxt parameters), with no Triton import; its LLM tiers' prompts are
``cascade.llm.prompts.PromptTemplate`` in their JSON form.

``python_backends/gate/model.py`` is thin glue: ``cascade.gate.request_io`` parses requests with
``cascade.gate.inputs``, turns each into a ``cascade.gate.escalate.CascadeRun`` over tiers that are BLS calls
(``cascade.gate.tiers``), and runs it through ``cascade.gate.lanes``. Everything here is unit-tested directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from cascade import contract
from cascade.contract import tier_from_name
from cascade.errors import ConfigError
from cascade.llm.prompts import PromptTemplate


# --- configuration (from config.pbtxt parameters) ------------------------------------------------
@dataclass(frozen=True)
class GateConfig:
    task: str
    labels: tuple[str, ...]
    tiers: tuple[int, ...]
    #: tier -> threshold on the top-class probability; every enabled tier but the last needs one.
    thresholds: dict[int, float]
    bls_timeout_ms: int = contract.DEFAULT_BLS_TIMEOUT_MS
    #: LLM tier -> its prompt: {"instruction": "...", "template": "...{text}...", "verbalizations": [...],
    #: "few_shot": [[text, label index], ...], "calibrate": true|false (optional)}. One per enabled LLM tier.
    prompts: dict[int, dict] = field(default_factory=dict)
    #: Embedding tiers run in-process by the gate (``contract.CFG_INLINE_TIERS``).
    inline_tiers: tuple[int, ...] = ()
    #: tier -> its own call deadline in ms (``contract.CFG_TIER_TIMEOUTS_MS``); others use bls_timeout_ms.
    tier_timeouts_ms: dict[int, int] = field(default_factory=dict)
    #: Where the gate's arrays live (``contract.CFG_PLACEMENT``).
    placement: str = contract.PLACEMENT_AUTO
    #: tier -> deadline per row of a call in ms (``contract.CFG_ROW_TIMEOUTS_MS``); others: DEFAULT_ROW_TIMEOUT_MS.
    row_timeouts_ms: dict[int, int] = field(default_factory=dict)
    #: How long a call may wait for a tier before its rows are given up on as busy (``CFG_QUEUE_TIMEOUT_MS``).
    queue_timeout_ms: int = contract.DEFAULT_QUEUE_TIMEOUT_MS
    #: The default of the ``on_tier_failure`` request parameter.
    on_tier_failure: str = contract.ON_FAILURE_BEST_EFFORT
    #: Where a GPU gate's tier calls take inputs and return outputs (``contract.CFG_TIER_MEMORY``).
    tier_memory: str = contract.TIER_MEMORY_DEVICE

    def __post_init__(self) -> None:
        if not self.task:
            raise ConfigError("gate parameter 'task' is empty")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"gate parameter 'labels' needs >= 2 distinct labels, got {self.labels!r}")
        if not self.tiers or list(self.tiers) != sorted(set(self.tiers)):
            raise ConfigError(f"gate parameter 'tiers' must be distinct and cheapest first: {self.tiers!r}")
        unknown = [t for t in self.tiers if t not in contract.TIER_NAMES]
        if unknown:
            raise ConfigError(f"gate parameter 'tiers' has unknown tiers {unknown}")
        for tier, value in self.thresholds.items():
            if tier not in self.tiers:
                raise ConfigError(
                    f"threshold given for tier {contract.TIER_NAMES.get(tier, tier)!r}, which is not enabled"
                )
            if not (isinstance(value, float) and 0.0 <= value <= 1.0):
                raise ConfigError(f"threshold of tier {contract.TIER_NAMES[tier]!r} must be in [0, 1]: {value!r}")
        missing = [contract.TIER_NAMES[t] for t in self.tiers[:-1] if t not in self.thresholds]
        if missing:
            raise ConfigError(f"gate parameter 'thresholds' lacks tiers {missing} (only the last may omit one)")
        if not (isinstance(self.bls_timeout_ms, int) and self.bls_timeout_ms > 0):
            raise ConfigError(f"gate parameter 'bls_timeout_ms' must be a positive integer: {self.bls_timeout_ms!r}")
        if not (
            self.placement in (contract.PLACEMENT_AUTO, "numpy", "torch:cpu")
            or (self.placement.startswith("torch:cuda:") and self.placement.rsplit(":", 1)[1].isdigit())
        ):
            raise ConfigError(
                f"gate parameter 'placement' must be auto, numpy, torch:cpu or torch:cuda:N, not {self.placement!r}"
            )
        for key, mapping in (("tier_timeouts_ms", self.tier_timeouts_ms), ("row_timeouts_ms", self.row_timeouts_ms)):
            for tier, ms in mapping.items():
                name = contract.TIER_NAMES.get(tier, tier)
                if tier not in self.tiers:
                    raise ConfigError(f"{key!r} names tier {name!r}, which is not enabled")
                if isinstance(ms, bool) or not (isinstance(ms, int) and ms > 0):
                    raise ConfigError(f"{key!r} of {name!r} must be a positive integer (ms): {ms!r}")
        if isinstance(self.queue_timeout_ms, bool) or not (
            isinstance(self.queue_timeout_ms, int) and self.queue_timeout_ms > 0
        ):
            raise ConfigError(
                f"gate parameter 'queue_timeout_ms' must be a positive integer: {self.queue_timeout_ms!r}"
            )
        if self.on_tier_failure not in contract.ON_TIER_FAILURE_CHOICES:
            raise ConfigError(
                f"gate parameter 'on_tier_failure' must be one of {list(contract.ON_TIER_FAILURE_CHOICES)}, "
                f"not {self.on_tier_failure!r}"
            )
        if self.tier_memory not in (contract.TIER_MEMORY_DEVICE, contract.TIER_MEMORY_HOST):
            raise ConfigError(f"gate parameter 'tier_memory' must be device or host, not {self.tier_memory!r}")
        for tier in self.prompts:
            if tier not in self.tiers or tier not in contract.LLM_TIERS:
                name = contract.TIER_NAMES.get(tier, tier)
                raise ConfigError(f"prompt given for tier {name!r}, which is not an enabled LLM tier")
        missing = [contract.TIER_NAMES[t] for t in self.tiers if t in contract.LLM_TIERS and t not in self.prompts]
        if missing:
            raise ConfigError(f"LLM tiers {missing} are enabled but gate parameter 'prompts' has no prompt for them")
        bad = [contract.TIER_NAMES.get(t, t) for t in self.inline_tiers if t not in self.tiers]
        bad += [
            contract.TIER_NAMES[t] for t in self.inline_tiers if t in self.tiers and t not in contract.EMBEDDING_TIERS
        ]
        if bad:
            raise ConfigError(f"gate parameter 'inline_tiers' may list enabled embedding tiers only, not {bad}")
        for tier, prompt in self.prompts.items():
            try:
                PromptTemplate.from_json(prompt, len(self.labels))
            except ConfigError as exc:
                raise ConfigError(f"prompt of {contract.TIER_NAMES[tier]}: {exc}") from exc

    def device(self, instance_kind: str, device_id: int) -> str | None:
        """The ``cascade.gate.arrays.Placement`` device of a gate instance of this kind (None: NumPy on the host)."""
        if self.placement == contract.PLACEMENT_AUTO:
            return f"cuda:{device_id}" if instance_kind == "GPU" else None
        return None if self.placement == "numpy" else self.placement.removeprefix("torch:")

    def exec_allowance_s(self, tier: int, rows: int) -> float:
        """How long one call of ``rows`` rows to ``tier`` may run once Triton has taken it, in seconds: a base
        (``tier_timeouts_ms`` or ``bls_timeout_ms``) plus a deadline per row, so a big call is not a dead one."""
        per_row = self.row_timeouts_ms.get(tier, contract.DEFAULT_ROW_TIMEOUT_MS[tier])
        return (self.tier_timeouts_ms.get(tier, self.bls_timeout_ms) + rows * per_row) / 1000

    def embedder_allowance_s(self, rows: int) -> float:
        return (self.bls_timeout_ms + rows * contract.EMBEDDER_ROW_TIMEOUT_MS) / 1000

    def request_allowance_s(self, rows: int, tiers: list[int] | tuple[int, ...], embed: bool = True) -> float:
        """The longest the gate may take over a request of ``rows`` rows that may reach ``tiers``: the embedder's
        allowance (``embed``) plus, per tier, its lane wait (``queue_timeout_ms``) and its call allowance. A client
        deadline shorter than this turns a slow answer into a failed request."""
        total = sum(self.queue_timeout_ms / 1000 + self.exec_allowance_s(t, rows) for t in tiers)
        return total + (self.embedder_allowance_s(rows) if embed else 0.0)

    @property
    def needs_embedding(self) -> bool:
        return any(t in contract.EMBEDDING_TIERS for t in self.tiers)

    def to_parameters(self) -> dict[str, str]:
        return (
            {
                contract.CFG_TASK: self.task,
                contract.CFG_LABELS: json.dumps(list(self.labels)),
                contract.CFG_TIERS: json.dumps([contract.TIER_NAMES[t] for t in self.tiers]),
                contract.CFG_THRESHOLDS: json.dumps(
                    {contract.TIER_NAMES[t]: v for t, v in sorted(self.thresholds.items())}
                ),
                contract.CFG_BLS_TIMEOUT_MS: str(self.bls_timeout_ms),
            }
            | (
                {contract.CFG_PROMPTS: json.dumps({contract.TIER_NAMES[t]: p for t, p in sorted(self.prompts.items())})}
                if self.prompts
                else {}
            )
            | (
                {contract.CFG_INLINE_TIERS: json.dumps([contract.TIER_NAMES[t] for t in self.inline_tiers])}
                if self.inline_tiers
                else {}
            )
            | ({contract.CFG_PLACEMENT: self.placement} if self.placement != contract.PLACEMENT_AUTO else {})
            | _tier_map(contract.CFG_TIER_TIMEOUTS_MS, self.tier_timeouts_ms)
            | _tier_map(contract.CFG_ROW_TIMEOUTS_MS, self.row_timeouts_ms)
            | (
                {contract.CFG_QUEUE_TIMEOUT_MS: str(self.queue_timeout_ms)}
                if self.queue_timeout_ms != contract.DEFAULT_QUEUE_TIMEOUT_MS
                else {}
            )
            | (
                {contract.CFG_ON_TIER_FAILURE: self.on_tier_failure}
                if self.on_tier_failure != contract.ON_FAILURE_BEST_EFFORT
                else {}
            )
            | ({contract.CFG_TIER_MEMORY: self.tier_memory} if self.tier_memory != contract.TIER_MEMORY_DEVICE else {})
        )

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> GateConfig:
        """Strict parsing: a missing required, unknown or malformed parameter is a :class:`ConfigError`; an optional
        one left out takes its default (``bls_timeout_ms``: ``contract.DEFAULT_BLS_TIMEOUT_MS``). Triton's own
        Python-backend keys (``contract.PYTHON_BACKEND_PARAMETERS``) are left to Triton."""
        params = {k: v for k, v in params.items() if k not in contract.PYTHON_BACKEND_PARAMETERS}
        expected = {
            contract.CFG_TASK,
            contract.CFG_LABELS,
            contract.CFG_TIERS,
            contract.CFG_THRESHOLDS,
        }
        optional = {
            contract.CFG_BLS_TIMEOUT_MS,
            contract.CFG_PROMPTS,
            contract.CFG_INLINE_TIERS,
            contract.CFG_TIER_TIMEOUTS_MS,
            contract.CFG_ROW_TIMEOUTS_MS,
            contract.CFG_QUEUE_TIMEOUT_MS,
            contract.CFG_ON_TIER_FAILURE,
            contract.CFG_PLACEMENT,
            contract.CFG_TIER_MEMORY,
        }
        unknown = set(params) - expected - optional
        if unknown:
            raise ConfigError(f"unknown gate parameters {sorted(unknown)}; expected {sorted(expected)}")
        missing = expected - set(params)
        if missing:
            raise ConfigError(f"missing gate parameters {sorted(missing)}")

        def load(key: str, kind: type):
            try:
                value = json.loads(params[key])
            except json.JSONDecodeError as exc:
                raise ConfigError(f"gate parameter {key!r} is not JSON: {params[key]!r}") from exc
            if not isinstance(value, kind):
                raise ConfigError(f"gate parameter {key!r} must be a JSON {kind.__name__}: {params[key]!r}")
            return value

        labels = load(contract.CFG_LABELS, list)
        if not all(isinstance(x, str) for x in labels):
            raise ConfigError(f"gate parameter 'labels' must list strings: {labels!r}")
        tiers = [tier_from_name(name, ConfigError) for name in load(contract.CFG_TIERS, list)]
        thresholds = {}
        for name, value in load(contract.CFG_THRESHOLDS, dict).items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"threshold of {name!r} must be a number: {value!r}")
            thresholds[tier_from_name(name, ConfigError)] = float(value)
        prompts = {}
        for name, prompt in (load(contract.CFG_PROMPTS, dict) if contract.CFG_PROMPTS in params else {}).items():
            if not isinstance(prompt, dict):
                raise ConfigError(f"prompt of {name!r} must be a JSON object: {prompt!r}")
            prompts[tier_from_name(name, ConfigError)] = prompt
        inline = load(contract.CFG_INLINE_TIERS, list) if contract.CFG_INLINE_TIERS in params else []
        inline = [tier_from_name(name, ConfigError) for name in inline]

        def tier_map(key: str) -> dict[int, int]:
            found = load(key, dict) if key in params else {}
            return {tier_from_name(name, ConfigError): ms for name, ms in found.items()}

        def integer(key: str, default: int) -> int:
            try:
                return int(params.get(key, default))
            except ValueError as exc:
                raise ConfigError(f"gate parameter {key!r} is not an integer: {exc}") from exc

        return cls(
            task=params[contract.CFG_TASK],
            labels=tuple(labels),
            tiers=tuple(tiers),
            thresholds=thresholds,
            bls_timeout_ms=integer(contract.CFG_BLS_TIMEOUT_MS, contract.DEFAULT_BLS_TIMEOUT_MS),
            prompts=prompts,
            inline_tiers=tuple(inline),
            tier_timeouts_ms=tier_map(contract.CFG_TIER_TIMEOUTS_MS),
            row_timeouts_ms=tier_map(contract.CFG_ROW_TIMEOUTS_MS),
            queue_timeout_ms=integer(contract.CFG_QUEUE_TIMEOUT_MS, contract.DEFAULT_QUEUE_TIMEOUT_MS),
            on_tier_failure=params.get(contract.CFG_ON_TIER_FAILURE, contract.ON_FAILURE_BEST_EFFORT),
            placement=params.get(contract.CFG_PLACEMENT, contract.PLACEMENT_AUTO),
            tier_memory=params.get(contract.CFG_TIER_MEMORY, contract.TIER_MEMORY_DEVICE),
        )


def _tier_map(key: str, mapping: dict[int, int]) -> dict[str, str]:
    """``{key: '{"tier name": value}'}``, or nothing for an empty mapping."""
    if not mapping:
        return {}
    return {key: json.dumps({contract.TIER_NAMES[t]: v for t, v in sorted(mapping.items())})}
