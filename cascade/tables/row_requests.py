"""A job's rows sent to the server: the one retry loop (:class:`Retry`), requests of bounded size with a limit in
flight, rows the server refuses isolated by halving, each request's deadline and the first contact with the server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from cascade.errors import InvalidInput, RowsUnanswered, ServerUnavailable

#: The client's deadline for a request that needs little time, and the margin over the gate's own allowance.
DEFAULT_CLIENT_TIMEOUT_S, DEADLINE_MARGIN_S = 120.0, 30.0
#: Seconds to wait before each retry of a request the server did not answer.
DEFAULT_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class Retry:
    """Backoff between retries of a request the server did not answer: ``backoff_s[i]`` seconds before retry
    ``i + 1``. The one retry loop of the table jobs: every request (:meth:`call`) and the first contact with the
    server (:func:`first_contact`)."""

    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S
    retried: int = 0

    async def call(self, fn, what: str, exhausted=None, first_retry=None):
        """``await fn()``, tried again after each pause while it raises :class:`ServerUnavailable`
        (``first_retry()``, if given, is called once, before the first retry). When the pauses are spent: the error
        ``exhausted(retries, exc)`` if given, else a :class:`ServerUnavailable` naming ``what`` (a
        :class:`RowsUnanswered` as it is: the server is there, those rows get an error and the job goes on)."""
        for attempt in range(len(self.backoff_s) + 1):
            try:
                return await fn()
            except ServerUnavailable as exc:
                if attempt == len(self.backoff_s):
                    if exhausted is not None:
                        raise exhausted(attempt, exc) from exc
                    if isinstance(exc, RowsUnanswered):
                        raise
                    raise ServerUnavailable(
                        f"{what}: no answer after {attempt} retries over {sum(self.backoff_s):.0f} s ({exc})"
                    ) from exc
                if attempt == 0 and first_retry is not None:
                    first_retry()
                self.retried += 1
                await asyncio.sleep(self.backoff_s[attempt])
        raise AssertionError("unreachable")


async def _isolate(call, rows: np.ndarray, errors: list[str | None], results: dict) -> None:
    """Send ``rows``; when the server refuses them as invalid, halve until the bad rows are found alone."""
    try:
        results[int(rows[0])] = (rows, await call(rows))
    except RowsUnanswered as exc:  # after the retries: no tier could score them; the job goes on
        for i in rows.tolist():
            errors[int(i)] = f"unanswered: {exc}"
    except InvalidInput as exc:
        if rows.size == 1:
            errors[int(rows[0])] = f"refused by the server: {exc}"
            return
        half = rows.size // 2
        await _isolate(call, rows[:half], errors, results)
        await _isolate(call, rows[half:], errors, results)


async def send_rows(
    call, rows: np.ndarray, batch_rows: int, errors: list[str | None], limit: asyncio.Semaphore
) -> dict[int, tuple[np.ndarray, object]]:
    """``call(row indices)`` for ``rows`` in requests of ``batch_rows``, at most ``limit`` in flight."""
    results: dict[int, tuple[np.ndarray, object]] = {}

    async def one(part: np.ndarray) -> None:
        async with limit:
            await _isolate(call, part, errors, results)

    await asyncio.gather(*(one(rows[i : i + batch_rows]) for i in range(0, rows.size, batch_rows)))
    return results


def request_deadline_s(gate, rows: int, tiers: list[int], embed: bool) -> float:
    """A request's client deadline: what the gate may take over it (``GateConfig.request_allowance_s``) and a
    margin, never less than the client's default. A request of 4,096 rows bound for the LLM takes minutes;
    a fixed deadline would fail it while the server is still answering."""
    return max(DEFAULT_CLIENT_TIMEOUT_S, gate.request_allowance_s(rows, tiers, embed) + DEADLINE_MARGIN_S)


def first_contact(fn, url: str, backoff_s: tuple[float, ...]):
    """``fn()``, a blocking call that opens a job (no event loop runs yet), retried by :class:`Retry` with the
    same backoff; when no server answers, a :class:`ServerUnavailable` that says to start one."""

    async def once():
        return fn()

    def exhausted(retries: int, exc: ServerUnavailable) -> ServerUnavailable:
        return ServerUnavailable(
            f"no server answers at {url} after {retries} retries (start one with `cascade serve`): {exc}"
        )

    return asyncio.run(Retry(backoff_s).call(once, url, exhausted))
