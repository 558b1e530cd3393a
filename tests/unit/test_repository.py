"""The repository writer's journaled commit: kill -9 at every step of an export, then recover.

A child process stages a new version of a task (three changed models and one new one) and is killed with
SIGKILL after its k-th rename (or while staging); ``recover`` must then leave exactly the previous version,
or exactly the new one once the commit point was passed, and no staging folder.
"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cascade.repository.journal import recover
from cascade.repository.writer import RepositoryWriter

OLD = ("sst2", "sst2_logreg", "sst2_xgboost")
NEW = (*OLD, "sst2_encoder")  # the new version adds a model that had no previous version
RENAMES = 2 * len(OLD) + 1 + 1  # old out + new in per existing model, one for the new model, the commit point


def model_source(root: Path, name: str, version: str) -> Path:
    folder = root / f"{version}-{name}"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(f'name: "{name}"  # {version}\n')
    (folder / "1" / "model.onnx").write_bytes(f"{version}:{name}".encode() * 1000)
    return folder


def snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


@pytest.fixture
def previous(tmp_path):
    repo = tmp_path / "cpu"
    with RepositoryWriter(repo) as writer:
        for name in OLD:
            writer.add_dir(name, model_source(tmp_path, name, "v1"))
    for name in NEW:
        model_source(tmp_path, name, "v2")
    return repo, snapshot(repo)


def export_killed(tmp_path: Path, repo: Path, after_renames: int | None = None, in_staging: bool = False) -> int:
    """Run an export of the new version in a child process that SIGKILLs itself at the chosen step."""
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from cascade.repository import writer as repository

        renames, staged = [0], [0]
        real_rename, real_add_dir = os.rename, repository.RepositoryWriter.add_dir
        real_abort = repository.RepositoryWriter.abort

        def die_after_renames():
            if renames[0] == {after_renames!r}:
                os.kill(os.getpid(), signal.SIGKILL)

        def rename(src, dst):
            die_after_renames()
            real_rename(src, dst)
            renames[0] += 1

        def abort(self):  # after the last rename (the commit point), before the old versions are deleted
            die_after_renames()
            real_abort(self)

        def add_dir(self, name, source):
            real_add_dir(self, name, source)
            staged[0] += 1
            if {in_staging!r} and staged[0] == 2:
                os.kill(os.getpid(), signal.SIGKILL)

        repository.os.rename, repository.RepositoryWriter.add_dir = rename, add_dir
        repository.RepositoryWriter.abort = abort
        with repository.RepositoryWriter(Path({str(repo)!r})) as writer:
            for name in {NEW!r}:
                writer.add_dir(name, Path({str(tmp_path)!r}) / f"v2-{{name}}")
    """)
    return subprocess.run([sys.executable, "-c", script], timeout=120).returncode


def test_a_clean_export_replaces_the_whole_task(tmp_path, previous):
    repo, _ = previous
    assert export_killed(tmp_path, repo) == 0
    state = snapshot(repo)
    assert sorted({k.split("/")[0] for k in state}) == sorted(NEW)
    assert all(b"v2" in v for v in state.values()) and not list(tmp_path.glob(".cpu.staging-*"))


@pytest.mark.parametrize("after", range(RENAMES + 1))
def test_an_export_killed_at_any_rename_recovers_one_whole_version(tmp_path, previous, after):
    repo, before = previous
    assert export_killed(tmp_path, repo, after_renames=after) == -signal.SIGKILL
    done = recover(repo)
    assert len(done) == 1 and not list(tmp_path.glob(".cpu.staging-*"))
    if after < RENAMES:  # killed before the commit point: the previous version, byte for byte
        assert "rolled back" in done[0]
        assert snapshot(repo) == before
    else:  # killed after it: the new version, complete
        assert sorted({k.split("/")[0] for k in snapshot(repo)}) == sorted(NEW)
        assert all(b"v2" in v for v in snapshot(repo).values())
    assert recover(repo) == []


def test_an_export_killed_while_staging_leaves_the_repository_untouched(tmp_path, previous):
    repo, before = previous
    assert export_killed(tmp_path, repo, in_staging=True) == -signal.SIGKILL
    assert snapshot(repo) == before  # even before recovery: nothing was renamed
    assert "staging folder" in recover(repo)[0] and not list(tmp_path.glob(".cpu.staging-*"))


def test_a_recovery_killed_midway_is_finished_by_the_next(tmp_path, previous, monkeypatch):
    repo, before = previous
    assert export_killed(tmp_path, repo, after_renames=5) == -signal.SIGKILL
    from cascade.repository import writer as repository

    real, calls = os.rename, []

    def dies_after_one(src, dst):
        if calls:
            raise KeyboardInterrupt  # stands in for a kill: the rollback stops between two renames
        calls.append(src)
        real(src, dst)

    monkeypatch.setattr(repository.os, "rename", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        recover(repo)
    monkeypatch.setattr(repository.os, "rename", real)
    assert "rolled back" in recover(repo)[0]
    assert snapshot(repo) == before


def test_a_live_writers_staging_folder_is_left_alone(tmp_path, previous):
    repo, before = previous
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        staging = tmp_path / ".cpu.staging-live"
        staging.mkdir()
        (staging / "OWNER").write_text(str(sleeper.pid))
        assert recover(repo) == [] and staging.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "staging folder" in recover(repo)[0] and not staging.exists()
    assert snapshot(repo) == before


def test_stale_shared_memory_regions_are_removed_and_live_ones_kept(tmp_path):
    import mmap

    from cascade.server.launcher import SHM_PREFIX, remove_stale_shm

    shm = tmp_path / "shm"
    shm.mkdir()
    stale, fresh, live = (shm / f"{SHM_PREFIX}{tag}-{os.getpid()}" for tag in ("stale", "fresh", "live"))
    for region in (stale, fresh, live):
        region.write_bytes(b"\0" * 4096)
    for region in (stale, live):
        os.utime(region, (1, 1))  # old enough
    with open(live, "r+b") as f, mmap.mmap(f.fileno(), 4096):  # mapped by this live process
        assert remove_stale_shm(shm) == [stale.name]
    assert not stale.exists() and fresh.exists() and live.exists()
