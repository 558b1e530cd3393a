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

    return {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(), "python": platform.python_version()}


def save_result(name: str, payload: dict, results_dir: Path | None = None) -> Path:
    """Write ``payload`` to ``results_dir/<name>-<local time>.json`` (default :data:`RESULTS_DIR`); its path."""
    folder = Path(results_dir) if results_dir is not None else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
