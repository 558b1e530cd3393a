"""A lifeline to a child process: the child is ended when this process dies, however it dies (SIGKILL included).

:class:`Lifeline` starts a watchdog, this file run as a script by the same Python (``-I -S``: the standard library
only; about 11 MB resident) in its own session, whose stdin is the read end of a pipe. The write end stays in this
process only: it is not inherited by an exec'd program, and a fork without exec closes its copy. The kernel closes it
when this process ends, whichever thread started the child, so the watchdog reads end of file and ends the child:
SIGTERM (tritonserver drains and stops its stubs), then after ``grace_s`` SIGKILL to the child's process group (the
stubs with it) when the child leads one, to the child alone otherwise. :meth:`Lifeline.release` (the child was
stopped here) writes a byte before closing, and the watchdog exits touching nothing. The watchdog also exits when the
child exits on its own (it holds a pidfd of it; without one it polls once a second).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time

#: Seconds between the watchdog's SIGTERM to the orphaned child and its SIGKILL to the child's group.
DEFAULT_GRACE_S = 10.0
#: The watchdog's exit codes: released by the parent; the child exited first; the child was ended (parent gone).
RELEASED, CHILD_EXITED, ENDED = 0, 10, 11
_RELEASE = b"r"
_HELD: set[Lifeline] = set()


class Lifeline:
    """This process's end of the lifeline to the process ``pid`` (started by this process)."""

    def __init__(self, pid: int, grace_s: float = DEFAULT_GRACE_S) -> None:
        self.pid = pid
        scope = "group" if os.getpgid(pid) == pid else "pid"
        read, self._write = os.pipe()  # both ends non-inheritable; Popen hands the read end to the watchdog only
        try:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), str(pid), str(grace_s), scope],
                stdin=read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", start_new_session=True,
            )  # fmt: skip
        except BaseException:
            os.close(self._write)
            raise
        finally:
            os.close(read)
        _HELD.add(self)  # held until released: only this process's end closes the pipe

    def release(self, timeout_s: float = 5.0) -> int | None:
        """The child was stopped (or reaped) here: the watchdog exits without signalling. Its exit code, or None."""
        if self._write >= 0:
            with contextlib.suppress(OSError):  # the watchdog may have exited already (the child did)
                os.write(self._write, _RELEASE)
            os.close(self._write)
            self._write = -1
        _HELD.discard(self)
        try:
            return self.watchdog.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None


def _forget_after_fork() -> None:
    """A forked child (``os.fork``, multiprocessing) must not keep the pipes open after its parent's death."""
    for line in _HELD:
        with contextlib.suppress(OSError):
            os.close(line._write)
        line._write = -1
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


# --- the watchdog --------------------------------------------------------------------------------
def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _wait_exit(pid: int, pidfd: int | None, timeout_s: float) -> None:
    """Wait up to ``timeout_s`` for the process to exit."""
    if pidfd is not None:
        select.select([pidfd], [], [], timeout_s)
        return
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _signal(pid: int, pidfd: int | None, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if pidfd is None:
            os.kill(pid, sig)
        else:
            signal.pidfd_send_signal(pidfd, sig)  # no pid reuse: the pidfd names this process only


def watch(pid: int, grace_s: float, group: bool, pipe: int = 0) -> int:
    """The watchdog: wait for the parent's release, its death (end of file on ``pipe``) or the child's exit."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return CHILD_EXITED
    except (AttributeError, OSError):  # no pidfd (an old kernel): poll
        pidfd = None
    while True:
        ready, _, _ = select.select([pipe] if pidfd is None else [pipe, pidfd], [], [], 1.0)
        if pipe in ready:
            if os.read(pipe, 1):
                return RELEASED
            break
        if (pidfd in ready) if pidfd is not None else not alive(pid):
            return CHILD_EXITED
    _signal(pid, pidfd, signal.SIGTERM)
    _wait_exit(pid, pidfd, grace_s)
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # what the child left in its group (tritonserver's stubs)
    else:
        _signal(pid, pidfd, signal.SIGKILL)
    return ENDED


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(watch(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "group"))
