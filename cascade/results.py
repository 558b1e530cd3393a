"""Where measured figures go: ``bench/results/<name>-<YYYYmmdd-HHMMSS>.json`` (benchmarks, demo, build).

Every file :func:`save_result` writes holds the checkout's ``commit``, the ``machine`` (cores, CPU model, the load
average when this module was first imported, i.e. before the run, and when the file was saved) and, where
``$CASCADE_BENCH_BUDGET_S`` states a time budget before the run, the ``time_budget`` and whether the run kept it."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from cascade.paths import RESULTS_DIR

#: A run's time budget in seconds, stated before it starts (the Makefile's bench targets set it).
BUDGET_ENV = "CASCADE_BENCH_BUDGET_S"


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


#: The 1/5/15-minute load average before the run (the commands import this module as they start).
LOAD_BEFORE = _loadavg()
_STARTED = time.monotonic()


def now_iso() -> str:
    """The ``"when"`` of a result: UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def command_line(argv: list[str] | None = None, prog: str = "cascade") -> str:
    """The ``"command"`` of a result: ``prog`` and its arguments (default: this process's)."""
    return " ".join([prog, *(sys.argv[1:] if argv is None else argv)])


def machine() -> dict:
    """The ``"machine"`` of a result: the cores this process may use, the platform, Python."""
    import platform

    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_before": LOAD_BEFORE,
        "load_at_save": _loadavg(),
    }


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def commit() -> str | None:
    """The checkout's ``git rev-parse HEAD`` (with ``-dirty`` for uncommitted changes); None outside a checkout."""
    import subprocess

    from cascade.paths import CHECKOUT

    if CHECKOUT is None:
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CHECKOUT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=CHECKOUT,
                               capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def save_result(name: str, payload: dict, results_dir: Path | None = None) -> Path:
    """Write ``payload`` to ``results_dir/<name>-<local time>.json`` (default :data:`RESULTS_DIR`); its path."""
    payload = stamped(payload)
    folder = Path(results_dir) if results_dir is not None else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def budget(took_s: float | None = None) -> dict | None:
    """The run's stated budget (``$CASCADE_BENCH_BUDGET_S``), the seconds it took and whether it kept it; None
    where no budget was stated."""
    raw = os.environ.get(BUDGET_ENV)
    if not raw:
        return None
    seconds = float(raw)
    took = time.monotonic() - _STARTED if took_s is None else took_s
    return {"seconds": seconds, "took_s": round(took, 1), "within": took <= seconds}


def stamped(payload: dict) -> dict:
    """``payload`` with the ``commit``, the ``machine`` (its own keys win) and the ``time_budget`` filled in."""
    out = {"commit": commit()} | payload
    out["machine"] = machine() | (payload.get("machine") or {})
    if (kept := budget()) is not None and "time_budget" not in payload:
        out["time_budget"] = kept
        if not kept["within"]:
            print(f"over budget: {kept['took_s']} s against {kept['seconds']:.0f} s", file=sys.stderr)
    return out
