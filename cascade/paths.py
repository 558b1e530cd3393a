"""The project's folders, derived once here: every other module imports them from this one.

Two layouts. From a checkout (``make setup`` installs it editable), the shipped files are the checkout's folders and
the files the commands write (model repository, runs, results) go there too. From a wheel (``pip install .``), the
shipped files are the package data under ``cascade/_resources`` (``setup.py`` copies them) and the written files go
under the current directory. The datasets folder alone can be moved, with ``--data-dir`` or ``$CASCADE_DATA_DIR``
(:func:`data_dir`).
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
#: The folders ``setup.py`` ships inside the wheel as ``cascade/_resources/<name>``.
RESOURCES = ("tasks", "python_backends", "data", "loadtest", "bench/data", "k8s/triton-cascade")
#: The checkout holding ``cascade/``, or ``None`` when the package runs from a wheel.
CHECKOUT = _PACKAGE.parent if (_PACKAGE.parent / "pyproject.toml").is_file() else None
#: Where the shipped files are: the checkout, or the wheel's package data.
SHIPPED_ROOT = CHECKOUT or _PACKAGE / "_resources"
#: Where the commands write by default: the checkout, or the current directory.
WORK_ROOT = CHECKOUT or Path.cwd()
#: The shipped task definitions: ``tasks/<name>.toml``.
TASKS_DIR = SHIPPED_ROOT / "tasks"
#: The Triton glue a model's ``1/model.py`` is copied from: ``python_backends/<source>/model.py``.
BACKENDS_DIR = SHIPPED_ROOT / "python_backends"
#: The locustfile ``cascade loadtest`` runs.
LOCUSTFILE = SHIPPED_ROOT / "loadtest" / "locustfile.py"
#: The benchmarks' shipped inputs (``bench/data``).
BENCH_DATA_DIR = SHIPPED_ROOT / "bench" / "data"
#: The Helm chart (``helm install NAME "$(python -c 'from cascade.paths import CHART_DIR; print(CHART_DIR)')"``).
CHART_DIR = SHIPPED_ROOT / "k8s" / "triton-cascade"
DATA_DIR_ENV = "CASCADE_DATA_DIR"
CACHE_DIR_ENV = "CASCADE_CACHE_DIR"
#: Files made once per machine (joined model weights, checksums, crash records): ``$CASCADE_CACHE_DIR`` moves it.
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "triton-cascade"


def cache_dir() -> Path:
    """Where assembled model files live: ``$CASCADE_CACHE_DIR`` or ``~/.cache/triton-cascade``."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)


#: The datasets the shipped tasks, the demo and the tests use (data/README.md).
DEFAULT_DATA_DIR = SHIPPED_ROOT / "data"

#: Where measured figures go: ``bench/results/<name>-<YYYYmmdd-HHMMSS>.json`` (:mod:`cascade.results`).
RESULTS_DIR = WORK_ROOT / "bench" / "results"
#: The benchmarks' scratch files (generated tables, load-test rows).
BENCH_WORK_DIR = WORK_ROOT / "bench" / "work"
#: The distillation files, one folder per task (``cascade label``, ``cascade create``, the demo).
RUNS_DIR = WORK_ROOT / "runs"
#: The CPU profile's model repository, the commands' default ``--repo``.
DEFAULT_REPO = WORK_ROOT / "model_repository" / "cpu"


def data_dir(override: str | Path | None = None) -> Path:
    """The datasets folder: ``override``, else ``$CASCADE_DATA_DIR``, else the shipped ``data/``."""
    return Path(override or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
