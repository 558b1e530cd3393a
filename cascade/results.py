"""Where measured figures go: ``bench/results/<name>-<YYYYmmdd-HHMMSS>.json`` (benchmarks, demo, build)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from cascade.paths import RESULTS_DIR


def now_iso() -> str:
    """The ``"when"`` of a result: UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def command_line(argv: list[str] | None = None, prog: str = "cascade") -> str:
    """The ``"command"`` of a result: ``prog`` and its arguments (default: this process's)."""
    return " ".join([prog, *(sys.argv[1:] if argv is None else argv)])


def machine() -> dict:
    """The ``"machine"`` of a result: the cores this process may use, the platform, Python."""
    import os
    import platform

    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
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
    folder = Path(results_dir) if results_dir is not None else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
