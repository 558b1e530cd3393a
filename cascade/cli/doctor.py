"""``cascade doctor``: print each check of :mod:`cascade.doctor` with its fix, exit 1 when one fails; and
:func:`preflight`, the quick checks that ``cascade serve`` and ``cascade demo`` run before they start."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

from cascade.errors import ConfigError

_LABELS = {"ok": ("OK", "green"), "info": ("INFO", "cyan"), "warn": ("WARN", "yellow"), "fail": ("FAIL", "bold red")}


class DoctorFailed(ConfigError):
    """A check of ``cascade doctor`` failed before a command that needs it started."""


def print_results(results, file=None, summary: str | None = None) -> None:
    """One line per check (status, name, detail) and an indented ``fix:`` line under each that is not ok: plain
    text in a log, coloured status words on a terminal."""
    from rich.console import Console
    from rich.text import Text

    console = Console(file=file or sys.stdout, highlight=False, soft_wrap=True)
    width = max((len(r.name) for r in results), default=0)
    for r in results:
        label, style = _LABELS[r.status]
        lines = r.detail.splitlines() or [""]
        line = Text.assemble((f"{label:<5}", style), f" {r.name:<{width}}  {lines[0]}")
        console.print(line)
        for more in lines[1:]:
            console.print(Text(f"{'':<5} {'':<{width}}  {more}"))
        if r.fix and r.status != "ok":
            console.print(Text(f"{'':<5} {'':<{width}}  fix: {r.fix}"))
    if summary:
        console.print(Text(summary))


def _summary(results, seconds: float) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "warn", "fail")}
    verdict = "cannot serve" if counts["fail"] else "ready to serve"
    return (
        f"cascade doctor: {verdict}: {counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failed "
        f"({seconds:.1f} s)"
    )


def cmd_doctor(args) -> int:
    from cascade import doctor

    start = time.perf_counter()
    results = doctor.run(quick=args.quick)
    seconds = time.perf_counter() - start
    failed = any(r.failed for r in results) or (args.strict and any(r.status == "warn" for r in results))
    if args.json:
        report = {"ok": not failed, "seconds": round(seconds, 3), "quick": args.quick}
        print(json.dumps(report | {"results": [r.to_dict() for r in results]}, indent=2))
    else:
        print_results(results, summary=_summary(results, seconds))
    return 1 if failed else 0


def preflight(args, ports: Sequence[tuple[str, int]] | None = None, host: str = "127.0.0.1") -> None:
    """Run the quick checks unless ``args.skip_doctor``: warnings and failures print to stderr; a failure stops the
    command (:class:`DoctorFailed`, with the fixes above it)."""
    if getattr(args, "skip_doctor", False):
        return
    from cascade import doctor

    results = [r for r in doctor.preflight(ports=ports, host=host) if r.status in ("warn", "fail")]
    if results:
        print_results(results, file=sys.stderr)
    failed = [r.name for r in results if r.failed]
    if failed:
        raise DoctorFailed(
            f"cascade doctor: {', '.join(failed)} failed (the fixes are above); run `cascade doctor` for every check, "
            "or pass --skip-doctor to start anyway"
        )
