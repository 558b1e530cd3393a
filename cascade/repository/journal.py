"""The journal of a repository commit, and the recovery after a writer was killed (no Triton or protobuf import:
``cascade serve`` runs :func:`recover` before it starts a server).

A task is several models (the gate and its tiers) that must change together. The writer
(``cascade.repository.writer.RepositoryWriter``) stages them in a folder beside the repository; its commit writes
a ``COMMIT`` file listing the models before the first rename and turns it into ``COMMITTED`` after the last. A
process killed at any point leaves one of three states, and :func:`recover` puts the repository back to a
consistent version:

- no journal (killed while staging): the repository was not touched; the staging folder is deleted;
- ``COMMIT`` (killed among the renames): each model is rolled back to its previous version (a model that
  had none is removed), so the repository keeps the previous version of the whole task;
- ``COMMITTED``: the new version is complete; the staging folder (the old versions) is deleted.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

JOURNAL, DONE, OWNER = "COMMIT", "COMMITTED", "OWNER"
OLD_PREFIX, NEW_PREFIX = ".old-", ".new-"


def staging_dirs(repo: Path) -> list[Path]:
    return sorted(repo.parent.glob(f".{repo.name}.staging-*"))


def fsync_dir(path: Path) -> None:
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
    for staging in staging_dirs(repo):
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
    fsync_dir(repo)
