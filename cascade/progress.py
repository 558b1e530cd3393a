"""Progress of a long job: a tqdm bar on a terminal, a few plain lines otherwise.

Without a TTY (CI, ``make demo > log``, ``nohup ... > file``) tqdm writes a line per refresh and a log grows to
thousands of lines; :func:`progress` then returns a :class:`PlainProgress`, which writes a start line, one per
~10% of the total (or one every ``every_s`` seconds when the total is unknown) and a final line with the count,
the elapsed time and the rate: at most ~11 lines a job."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

#: Lines between the start and the end of a job of known total (one per tenth).
STEPS = 10
#: Seconds between lines of a job of unknown total.
EVERY_S = 30.0


def is_tty(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (a closed or odd stream is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def progress(
    total: int | float | None,
    desc: str,
    unit: str = "it",
    *,
    initial: int = 0,
    disable: bool = False,
    stream: TextIO | None = None,
    every_s: float = EVERY_S,
    **tqdm_kwargs: Any,
) -> Any:
    """A progress reporter for a job of ``total`` ``unit``s (None: unknown), ``initial`` of them already done.

    On a TTY ``stream`` (default: ``sys.stderr`` at call time) it is a ``tqdm`` bar, given ``tqdm_kwargs`` too
    (``unit_scale``, ``smoothing``...); otherwise a :class:`PlainProgress`. Both have ``update(n)``, ``close()``,
    ``set_postfix(...)``, ``set_description(...)``, ``n``, ``total`` and are context managers. ``disable``:
    nothing is written."""
    stream = sys.stderr if stream is None else stream
    if is_tty(stream):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, file=stream, **tqdm_kwargs)
    return PlainProgress(total, desc, unit, initial=initial, disable=disable, stream=stream, every_s=every_s)


class PlainProgress:
    """tqdm's used API, writing a few whole lines to a stream that is not a terminal; see the module docstring."""

    def __init__(
        self,
        total: int | float | None,
        desc: str,
        unit: str = "it",
        *,
        initial: int = 0,
        disable: bool = False,
        stream: TextIO | None = None,
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.initial = initial
        self.disable = disable
        self.stream = sys.stderr if stream is None else stream
        self.every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._postfix = ""
        self._closed = False
        self._start = self._last = clock()
        self._step = self._tenth(initial)
        if not disable:
            done = f", {self._count()} done" if initial else ""
            size = f"{_fmt(total)} {unit}" if total is not None else f"{unit} not counted ahead"
            self._write(f"{desc}: start, {size}{done}")

    def _tenth(self, n: float) -> int:
        """Which tenth of the total ``n`` is in (0 for an unknown or empty total)."""
        return int(n * STEPS // self.total) if self.total else 0

    def _count(self) -> str:
        if self.total is None:
            return f"{_fmt(self.n)} {self.unit}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        return f"{_fmt(self.n)}/{_fmt(self.total)} {self.unit}{share}"

    def _rate(self, elapsed: float) -> str:
        done = self.n - self.initial
        if elapsed <= 0:
            return f"? {self.unit}/s"
        rate = done / elapsed
        shown = f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}" if rate >= 1 else f"{rate:.2g}"
        return f"{shown} {self.unit}/s"

    def _write(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (ValueError, OSError):  # a closed stream: progress is not worth failing the job for
            pass

    def _line(self, head: str) -> str:
        elapsed = self._clock() - self._start
        postfix = f", {self._postfix}" if self._postfix else ""
        return f"{self.desc}: {head}{self._count()} in {elapsed:,.1f} s ({self._rate(elapsed)}){postfix}"

    def update(self, n: float = 1) -> None:
        """``n`` more done; a line when a new tenth of the total is reached (not the last: :meth:`close` says it)
        or, for an unknown total, when ``every_s`` seconds have passed since the last line."""
        with self._lock:
            self.n += n
            if self.disable or self._closed:
                return
            if self.total:
                step = self._tenth(self.n)
                if step > self._step:
                    self._step = step
                    if self.n < self.total:
                        self._write(self._line(""))
            elif self._clock() - self._last >= self.every_s:
                self._last = self._clock()
                self._write(self._line(""))

    def close(self) -> None:
        """The final line (once): the count, the elapsed time and the rate."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self.disable:
                finished = self.total is None or self.n >= self.total
                self._write(self._line("done, " if finished else "stopped at "))

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Shown at the end of the next lines, as ``key=value`` pairs like tqdm's."""
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(f"{key}={value}" for key, value in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing to redraw: lines are written as they come."""

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(n: float) -> str:
    """``1,234`` for a whole count, ``12.5`` otherwise."""
    return f"{n:,.0f}" if float(n).is_integer() else f"{n:,.1f}"
