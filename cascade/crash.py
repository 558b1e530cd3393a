"""Why a Python-backend model's process died: crash records written by the process, read by whoever saw it die.

Triton reports a dead stub only as "Stub process '<instance>' is not healthy". Each model of the repository arms
:func:`arm` in ``initialize``: Python's :mod:`faulthandler` then writes the fatal signal and every thread's
traceback into ``<crash dir>/<model>@<instance>.<server pid>.<pid>.crash`` when the process dies of SIGSEGV, SIGILL,
SIGFPE, SIGABRT or SIGBUS. A process killed by SIGKILL (the OOM killer, ``kill -9``) cannot write anything: its file
stays empty, and an empty file whose process is gone reads as "killed, likely out of memory".

:func:`explain` turns an error message that names a dead stub into a sentence naming the model, the signal, the
likely cause and the fix; the gate (:mod:`cascade.gate.calls`), the CLI and ``cascade doctor`` use it.
No Triton import: this module is plain Python.
"""

from __future__ import annotations

import atexit
import faulthandler
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cascade.paths import cache_dir

#: Where crash records go; default ``<cache dir>/crashes`` (``$CASCADE_CACHE_DIR`` or ``~/.cache/triton-cascade``).
CRASH_DIR_ENV = "CASCADE_CRASH_DIR"
SUFFIX = ".crash"
_STUB = re.compile(r"Stub process '(?P<instance>[^']+)' is not healthy")
#: faulthandler's wording of each signal -> (signal name, likely cause, what to do).
SIGNALS = {
    "Illegal instruction": (
        "SIGILL",
        "an instruction this CPU does not run",
        "rebuild llama-cpp-python portable (bash scripts/llama_wheel.sh .venv; make setup does), see `cascade doctor`",
    ),
    "Segmentation fault": ("SIGSEGV", "a memory fault in native code", "see the traceback in {path}"),
    "Bus error": ("SIGBUS", "a bad memory mapping, often a full /dev/shm", "check `cascade doctor` (/dev/shm size)"),
    "Aborted": ("SIGABRT", "native code aborted", "see the server log and {path}"),
    "Floating point exception": ("SIGFPE", "an arithmetic fault in native code", "see the traceback in {path}"),
}
KILLED = (
    "SIGKILL",
    "killed, likely out of memory",
    "give the server more memory or fewer model instances (dmesg names the OOM killer)",
)
_open_files: list = []  # faulthandler writes to the file descriptor: keep the file open for the process's life


def crash_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(CRASH_DIR_ENV):
        return Path(env[CRASH_DIR_ENV])
    return cache_dir() / "crashes"


def arm(model: str, instance: str, directory: Path | None = None) -> Path | None:
    """Have this process write a crash record if it dies of a fatal signal; the path, or None when the folder
    cannot be written (a read-only file system: serving goes on without records)."""
    directory = crash_dir() if directory is None else Path(directory)
    path = directory / f"{model}@{instance}.{os.getppid()}.{os.getpid()}{SUFFIX}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _prune(directory)
        f = open(path, "w")  # noqa: SIM115 - open for the life of the process
    except OSError:
        return None
    _open_files.append(f)
    faulthandler.enable(file=f, all_threads=True)
    atexit.register(disarm, path)  # a process that exits (not one killed by a signal) leaves no record
    return path


def disarm(path: Path | None = None) -> None:
    """The model is finalized (unloaded, or the server stops): no more records from this process (the Python
    backend's stub may still fault while it exits, which is no failure of serving), and an empty record goes."""
    if path is None:
        faulthandler.disable()
        paths = [Path(f.name) for f in _open_files]
        for f in _open_files:
            f.close()
        _open_files.clear()
    else:
        paths = [path]
    for p in paths:
        if p.is_file() and p.stat().st_size == 0:
            p.unlink(missing_ok=True)


@dataclass(frozen=True)
class CrashRecord:
    path: Path
    model: str
    instance: str
    server_pid: int
    pid: int
    time: float
    #: "SIGILL", ... from the record; "SIGKILL" for an empty record of a dead process.
    signal: str
    cause: str
    fix: str

    def explanation(self) -> str:
        return f"{self.model}: its process died with {self.signal} ({self.cause}): {self.fix.format(path=self.path)}"


def read(path: Path) -> CrashRecord | None:
    """The record at ``path``, or None while its process lives (or the name is not a record's)."""
    m = re.fullmatch(rf"(?P<model>.+)@(?P<instance>.+)\.(?P<server>\d+)\.(?P<pid>\d+){re.escape(SUFFIX)}", path.name)
    if m is None:
        return None
    try:
        text = path.read_text(errors="replace")
        mtime = path.stat().st_mtime
    except OSError:
        return None
    found = [what for wording, what in SIGNALS.items() if f"Fatal Python error: {wording}" in text]
    if not found and _alive(int(m["pid"])):
        return None
    sig, cause, fix = found[0] if found else KILLED
    return CrashRecord(path, m["model"], m["instance"], int(m["server"]), int(m["pid"]), mtime, sig, cause, fix)


def recent(limit: int = 5, directory: Path | None = None, server_pid: int | None = None) -> list[CrashRecord]:
    """The newest crash records (of one server's stubs when ``server_pid`` is given), newest first."""
    directory = crash_dir() if directory is None else Path(directory)
    pattern = f"*.{server_pid}.*{SUFFIX}" if server_pid is not None else f"*{SUFFIX}"
    paths = sorted(directory.glob(pattern), key=_mtime, reverse=True)
    records = [r for r in map(read, paths) if r is not None]
    return records[:limit]


def explain(message: str, server_pid: int | None = None, directory: Path | None = None) -> str | None:
    """A sentence naming the model, signal, cause and fix when ``message`` reports a dead stub that left a crash
    record; None otherwise."""
    m = _STUB.search(message)
    if m is None:
        return None
    instance = m["instance"]
    for record in recent(limit=50, directory=directory, server_pid=server_pid):
        if record.instance == instance:
            return record.explanation()
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (a dead child not yet reaped) still answers signal 0.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _prune(directory: Path, keep_s: float = 7 * 86400) -> None:
    """Empty records of processes that are gone without a crash would read as SIGKILL forever: those older than a
    day go, and every record older than ``keep_s``."""
    now = time.time()
    for path in directory.glob(f"*{SUFFIX}"):
        try:
            st = path.stat()
        except OSError:
            continue
        if now - st.st_mtime > keep_s or (st.st_size == 0 and now - st.st_mtime > 86400):
            path.unlink(missing_ok=True)
