"""Writing the Triton model repository atomically: models are built in a staging folder beside the
repository and renamed into place, so the server never sees a half-written model.

A task is several models (the gate and its tiers) that must change together. The commit is journaled: a
``COMMIT`` file in the staging folder lists the models before the first rename and becomes ``COMMITTED``
after the last. A process killed at any point leaves one of three states, and :func:`recover` (run before
every write and when a server starts) puts the repository back to a consistent version:

- no journal (killed while staging): the repository was not touched; the staging folder is deleted;
- ``COMMIT`` (killed among the renames): each model is rolled back to its previous version (a model that
  had none is removed), so the repository keeps the previous version of the whole task;
- ``COMMITTED``: the new version is complete; the staging folder (the old versions) is deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from cascade import contract
from cascade.configgen import (
    BACKEND_GATE,
    BACKEND_LLM_SCORER,
    BACKEND_ONNX_RUNNER,
    ModelSpec,
    parse_config,
    write_config,
)
from cascade.tasks import REPO_ROOT

BACKENDS_DIR = REPO_ROOT / "python_backends"
VERSION = contract.MODEL_VERSION
JOURNAL, DONE, OWNER = "COMMIT", "COMMITTED", "OWNER"
OLD_PREFIX, NEW_PREFIX = ".old-", ".new-"


def _staging_dirs(repo: Path) -> list[Path]:
    return sorted(repo.parent.glob(f".{repo.name}.staging-*"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _owner_alive(staging: Path) -> bool:
    """Whether another live process is still writing through this staging folder."""
    try:
        pid = int((staging / OWNER).read_text())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(repo: Path) -> list[str]:
    """Finish what killed writers left beside ``repo`` (see the module docstring); returns what was done."""
    repo = Path(repo)
    done = []
    for staging in _staging_dirs(repo):
        if _owner_alive(staging):
            continue
        journal = staging / JOURNAL
        if journal.is_file():
            names = json.loads(journal.read_text())["names"]
            for name in names:
                _roll_back(repo, staging, name)
            done.append(f"rolled back an interrupted commit of {names} in {repo}")
        elif (staging / DONE).is_file():
            done.append(f"removed the old versions left by a finished commit in {repo}")
        else:
            done.append(f"removed an interrupted export's staging folder {staging.name}")
        shutil.rmtree(staging, ignore_errors=True)
    return done


def _roll_back(repo: Path, staging: Path, name: str) -> None:
    """Put ``repo/name`` back to its version before the commit; safe to repeat after another kill."""
    dest, old, new = repo / name, staging / f"{OLD_PREFIX}{name}", staging / f"{NEW_PREFIX}{name}"
    if (staging / name).exists() and not old.exists():
        return  # not reached by the commit: dest is the previous version (or absent)
    if not (staging / name).exists() and dest.exists():
        os.rename(dest, new)  # the new version had been moved into place: take it out
    if old.exists():
        os.rename(old, dest)
    _fsync_dir(repo)


class RepositoryWriter:
    """``with RepositoryWriter(repo) as w: d = w.add(spec); ...`` — committed on success only."""

    def __init__(self, repo: Path, profile: str = "cpu") -> None:
        self.repo = Path(repo)
        self.profile = profile
        self.repo.mkdir(parents=True, exist_ok=True)
        self.recovered = recover(self.repo)
        self.staging = Path(tempfile.mkdtemp(dir=self.repo.parent, prefix=f".{self.repo.name}.staging-"))
        (self.staging / OWNER).write_text(str(os.getpid()))
        self.names: list[str] = []

    def add(self, spec: ModelSpec) -> Path:
        """Stage a model: its config.pbtxt and Python-backend source; returns the version folder."""
        model_dir = self.staging / spec.name
        version = model_dir / VERSION
        version.mkdir(parents=True)
        write_config(spec, model_dir, self.profile)
        if spec.backend == "python":  # other backends (tensorrtllm) bring their own code: 1/ stays empty
            shutil.copy2(BACKENDS_DIR / spec.source / "model.py", version / "model.py")
        self.names.append(spec.name)
        return version

    def add_dir(self, name: str, source: Path) -> Path:
        """Stage a model folder prepared elsewhere (``cascade export`` of a trained task), copied whole."""
        if not (Path(source) / "config.pbtxt").is_file():
            raise FileNotFoundError(f"{source} is not a model folder (no config.pbtxt)")
        shutil.copytree(source, self.staging / name)
        self.names.append(name)
        return self.staging / name / VERSION

    def commit(self) -> list[str]:
        """Move every staged model into place, all or none (journaled: see the module docstring)."""
        journal = self.staging / JOURNAL
        with open(journal, "w") as f:
            json.dump({"names": self.names}, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.staging)
        for name in self.names:
            dest = self.repo / name
            if dest.exists():
                os.rename(dest, self.staging / f"{OLD_PREFIX}{name}")
            os.rename(self.staging / name, dest)
        _fsync_dir(self.repo)
        os.rename(journal, self.staging / DONE)  # the commit point
        self.abort()
        return self.names

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> RepositoryWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def python_source(model_dir: Path) -> str | None:
    """Which ``python_backends/<source>`` a built CPU model runs (None: not a Python-backend model)."""
    config = parse_config((Path(model_dir) / "config.pbtxt").read_text())
    if config.backend != "python":
        return None
    params = set(config.parameters)
    if contract.CFG_LLM_MODEL in params:
        return BACKEND_LLM_SCORER
    if contract.CFG_TASK in params:
        return BACKEND_GATE
    return BACKEND_ONNX_RUNNER


def refresh_backends(repo: Path) -> list[str]:
    """Copy the current ``model.py`` glue into every CPU Python model of a built repository (for developers
    who edit ``python_backends/`` and reuse a repository instead of rebuilding it). Returns the models."""
    refreshed = []
    for model_dir in sorted(p for p in Path(repo).iterdir() if (p / "config.pbtxt").is_file()):
        source = python_source(model_dir)
        if source is not None:
            shutil.copy2(BACKENDS_DIR / source / "model.py", model_dir / VERSION / "model.py")
            refreshed.append(model_dir.name)
    return refreshed
