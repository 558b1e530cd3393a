"""What one check of ``cascade doctor`` found: a :class:`Result` (nothing prints here: :mod:`cascade.cli.doctor`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"
#: The statuses, least to most severe.
STATUSES = (OK, INFO, WARN, FAIL)


@dataclass(frozen=True)
class Result:
    """One check's outcome: ``status`` is ok, info (nothing to judge, e.g. recent crash records), warn (serving
    works, but not as it should: a busy port, a non-portable build) or fail (serving will not work); ``fix`` says
    what to do when the status is not ok."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def to_dict(self) -> dict:
        return asdict(self)


def worst(results: list[Result]) -> str:
    """The most severe status among ``results`` (ok for none)."""
    return max((r.status for r in results), key=STATUSES.index, default=OK)
