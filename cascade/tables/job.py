"""What the table jobs share: the columns the filter job writes, its options (:class:`FilterOptions`) and the tiers
they let rows reach, what a job's work counts (:class:`Counts`), its summary (:class:`JobSummary`), its progress bar
and how its event loop runs."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cascade import contract
from cascade.errors import ConfigError, ServerError
from cascade.tables.chunk_store import ChunkStore
from cascade.tables.table_io import DEFAULT_CHUNK_ROWS

#: Columns a filter job adds to each row.
LABEL_COLUMN, CONFIDENCE_COLUMN, TIER_COLUMN, ERROR_COLUMN = "label", "confidence", "tier", "error"
#: True where the row's answer is best-effort (the tier meant to answer it failed or was too slow).
DEGRADED_COLUMN = "degraded"
RESULT_COLUMNS = (LABEL_COLUMN, CONFIDENCE_COLUMN, TIER_COLUMN, DEGRADED_COLUMN, ERROR_COLUMN)
#: What the filter job does with best-effort rows: keep their answer, or send them again (then keep it).
ON_DEGRADED_KEEP, ON_DEGRADED_RETRY = "keep", "retry"
#: The column ``cascade embed`` writes and ``cascade filter`` sends as EMBEDDING when present.
EMBEDDING_COLUMN = "embedding"
#: A filter job's defaults: rows per request (the gate's largest batch) and requests in flight.
DEFAULT_BATCH_ROWS = contract.GATE_MAX_BATCH_SIZE
DEFAULT_IN_FLIGHT = 4


@dataclass(frozen=True)
class FilterOptions:
    task: str
    text_column: str = "text"
    embedding_column: str | None = EMBEDDING_COLUMN  # used when the table has it
    where: str | None = None
    max_tier: str | int | None = None
    min_tier: str | int | None = None
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    batch_rows: int = DEFAULT_BATCH_ROWS
    in_flight: int = DEFAULT_IN_FLIGHT
    keep_embedding: bool = False
    #: Best-effort rows (a slow or failed tier): keep their answer, or send them again up to ``degraded_retries``
    #: times (with the backoff of unanswered requests) and keep the last answer.
    on_degraded: str = ON_DEGRADED_KEEP
    degraded_retries: int = 2
    #: Put before the result columns' names (``label`` -> ``ai_label``) when the table has such columns.
    prefix: str = ""

    def col(self, name: str) -> str:
        return self.prefix + name

    def check(self) -> None:
        if self.chunk_rows < 1 or self.batch_rows < 1 or self.in_flight < 1:
            raise ConfigError("chunk rows, batch rows and in-flight requests must be positive")
        if self.batch_rows > contract.GATE_MAX_BATCH_SIZE:
            raise ConfigError(f"--batch-size {self.batch_rows} is over the gate's {contract.GATE_MAX_BATCH_SIZE}")
        if self.on_degraded not in (ON_DEGRADED_KEEP, ON_DEGRADED_RETRY):
            raise ConfigError(f"--on-degraded must be keep or retry, not {self.on_degraded!r}")
        if self.degraded_retries < 0:
            raise ConfigError("--degraded-retries must be 0 or more")


@dataclass
class Counts:
    """What a job's work counted: one chunk's (a Ray worker sends it to the driver as a row of
    ``cascade.tables.ray_worker.RESULT_SCHEMA``), and the job's, added up by either engine."""

    rows: int = 0
    error_rows: int = 0
    degraded_rows: int = 0
    #: Rows of requests sent again because the server did not answer, and best-effort rows sent again.
    retried_rows: int = 0
    degraded_retried: int = 0
    #: Requests sent again, and switches to another server (the Ray engine's).
    retries: int = 0
    failovers: int = 0
    #: CPU seconds the client side spent on the work counted.
    cpu_s: float = 0.0
    #: tier -> rows it answered.
    tiers: dict[int, int] = field(default_factory=dict)

    def add_retried(self, rows: int) -> None:
        """Rows sent again (:meth:`cascade.tables.row_requests.Retry.call`'s ``first_retry``)."""
        self.retried_rows += rows

    def add(self, other: Counts) -> None:
        for name in NUMBERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for tier, n in other.tiers.items():
            self.tiers[tier] = self.tiers.get(tier, 0) + n

    def to_row(self) -> dict:
        """A flat row (``tiers`` as JSON), the form a Ray worker returns."""
        return {name: getattr(self, name) for name in NUMBERS} | {
            "tiers": json.dumps({str(t): n for t, n in self.tiers.items()})
        }

    @classmethod
    def from_row(cls, row: dict) -> Counts:
        return cls(
            **{name: row[name] for name in NUMBERS}, tiers={int(t): n for t, n in json.loads(row["tiers"]).items()}
        )


#: The numeric fields of :class:`Counts`, in order.
NUMBERS = tuple(f.name for f in fields(Counts) if f.name != "tiers")


@dataclass
class JobSummary:
    job: str
    rows: int
    out: str
    wall_s: float
    rows_per_s: float
    resumed_chunks: int = 0
    error_rows: int = 0
    errors_file: str | None = None
    retries: int = 0
    #: Rows whose answer is best-effort (``degraded`` column), and rows sent again because they were.
    degraded_rows: int = 0
    degraded_retried: int = 0
    #: Rows of the requests retried (``retries`` counts the requests); the Ray engine's switches to another server.
    retried_rows: int = 0
    failovers: int = 0
    #: ``local`` (one process, one server) or ``ray`` (cascade.tables.ray_engine: many workers, many servers).
    engine: str = "local"
    #: CPU seconds the client side spent: the job's process (local), or the driver and its workers (ray).
    client_cpu_s: float | None = None
    tiers: dict[str, int] = field(default_factory=dict)
    llm_share: float | None = None
    where: str | None = None
    matching_rows: int | None = None
    cost: dict | None = None

    def take(self, counts: Counts) -> None:
        """The counts of the work itself (not read back from the committed parts): retries, rows sent again and
        failovers."""
        self.retries, self.retried_rows = counts.retries, counts.retried_rows
        self.degraded_retried, self.failovers = counts.degraded_retried, counts.failovers

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class OpenedJob:
    """A job checked and its chunk store opened, before any row is sent: what either engine runs."""

    table: Path
    out: Path
    #: Rows in the table (None for a CSV, which is not counted ahead).
    total: int | None
    plan: object  # cascade.tables.filter_chunk.FilterPlan or cascade.tables.embed_chunk.EmbedPlan
    store: ChunkStore
    #: Chunks committed by an earlier run (skipped by this one).
    resumed: int
    #: Each server's model statistics at the start, by URL (the filter job's cost reads them at the end).
    before: dict = field(default_factory=dict)
    #: The first server's ``/metrics`` and the LLM tiers' counters there at the start (``cascade.llm.cost_report``).
    metrics_url: str | None = None
    metrics_before: dict | None = None
    #: Prices of the LLM tiers for the cost report, by model name (``cascade.llm.meter.Price``; None: the served ones).
    llm_prices: dict | None = None


def job_progress(total: int | None, initial: int, what: str, quiet: bool):
    from cascade.progress import progress

    return progress(total, what, "rows", initial=initial, disable=quiet, unit_scale=True, smoothing=0.1)


def run_job(main, store: ChunkStore, progress) -> None:
    """Run a job's event loop; a server error keeps the committed chunks and says how to resume."""
    try:
        asyncio.run(main())
    except ServerError as exc:
        raise type(exc)(
            f"{exc}. Progress kept: {len(store.done())} chunk(s) committed in {store.dir}; "
            "rerun the same command to resume"
        ) from exc
    finally:
        progress.close()


def reachable_tiers(gate, options: FilterOptions) -> list[int]:
    """The gate's tiers that the job's --min-tier/--max-tier let rows reach (a bad tier name fails here, before
    any row is sent)."""
    from cascade.gate.inputs import RequestOptions

    params = {}
    if options.max_tier is not None:
        params[contract.PARAM_MAX_TIER] = options.max_tier
    if options.min_tier is not None:
        params[contract.PARAM_MIN_TIER] = options.min_tier
    request = RequestOptions.parse(params, gate.tiers)
    return [t for t in gate.tiers if request.min_tier <= t <= request.max_tier]


def embedding_tiers_only(gate, options: FilterOptions) -> bool:
    return all(t in contract.EMBEDDING_TIERS for t in reachable_tiers(gate, options))
