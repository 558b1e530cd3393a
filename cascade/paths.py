"""The checkout's folders, derived once here: every other module imports them from this one.

``REPO_ROOT`` is the folder holding ``cascade/`` (and ``export/``, ``client/``, ``python_backends/``);
the datasets folder alone can be moved, with ``--data-dir`` or ``$CASCADE_DATA_DIR`` (:func:`data_dir`).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The shipped task definitions: ``tasks/<name>.toml``.
TASKS_DIR = REPO_ROOT / "tasks"
#: Where measured figures go: ``bench/results/<name>-<YYYYmmdd-HHMMSS>.json`` (:mod:`cascade.results`).
RESULTS_DIR = REPO_ROOT / "bench" / "results"
#: The benchmarks' scratch files (generated tables, load-test rows).
BENCH_WORK_DIR = REPO_ROOT / "bench" / "work"
#: The distillation files, one folder per task (``cascade label``, ``cascade create``, the demo).
RUNS_DIR = REPO_ROOT / "runs"
#: The CPU profile's model repository, the commands' default ``--repo``.
DEFAULT_REPO = REPO_ROOT / "model_repository" / "cpu"
#: The Triton glue a model's ``1/model.py`` is copied from: ``python_backends/<source>/model.py``.
BACKENDS_DIR = REPO_ROOT / "python_backends"
DATA_DIR_ENV = "CASCADE_DATA_DIR"
#: The datasets the shipped tasks, the demo and the tests use, Parquet in the repository (data/README.md).
DEFAULT_DATA_DIR = REPO_ROOT / "data"


def data_dir(override: str | Path | None = None) -> Path:
    """The datasets folder: ``override``, else ``$CASCADE_DATA_DIR``, else the repository's ``data/``."""
    return Path(override or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
