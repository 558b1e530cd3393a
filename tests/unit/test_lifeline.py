"""cascade.server.lifeline with plain child processes (``sleep``): a child is ended when the process that started it
is SIGKILLed, also when a worker thread started it and exited, also when it ignores SIGTERM (SIGKILL to its group,
grandchildren included), and also when that process has forked; a released or exited child's watchdog exits."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from cascade.server.lifeline import CHILD_EXITED, RELEASED, Lifeline

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARENT = """
import os, subprocess, sys, threading, time
from cascade.server.lifeline import Lifeline
mode = sys.argv[1]
cmd = ["sh", "-c", "trap '' TERM; sleep 300 & sleep 300"] if mode == "stubborn" else ["sleep", "300"]
started = {}
def start():
    started["child"] = subprocess.Popen(cmd, start_new_session=True)
    started["line"] = Lifeline(started["child"].pid, grace_s=1.0)
worker = threading.Thread(target=start)  # the thread that forks the child ends before this process does
worker.start()
worker.join()
forked = os.fork() if mode == "fork" else 0
if forked == 0 and mode == "fork":
    time.sleep(300)
    os._exit(0)
print(started["child"].pid, forked, flush=True)
time.sleep(300)
"""


def group(pgid: int) -> set[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.add(int(entry))
    return found


def wait_empty(pgid: int, timeout_s: float) -> float:
    start = time.monotonic()
    while group(pgid) and time.monotonic() - start < timeout_s:
        time.sleep(0.05)
    assert not group(pgid), f"group {pgid} still has {group(pgid)} after {timeout_s} s"
    return time.monotonic() - start


def start_parent(mode: str) -> tuple[subprocess.Popen, int, int]:
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode], stdout=subprocess.PIPE, text=True, env=env)
    child, forked = map(int, parent.stdout.readline().split())
    return parent, child, forked


@pytest.mark.parametrize("mode", ["plain", "fork"])
def test_the_child_dies_with_its_parent_though_the_thread_that_started_it_exited(mode):
    parent, child, forked = start_parent(mode)
    try:
        time.sleep(0.5)
        assert group(child) == {child}  # the starting thread's exit did not end it
        parent.kill()
        parent.wait()
        assert wait_empty(child, 10) < 10  # SIGTERM ends sleep: well within the grace
    finally:
        for pid in (child, forked):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_a_child_that_ignores_sigterm_is_killed_with_its_group_after_the_grace():
    parent, child, _ = start_parent("stubborn")
    try:
        for _ in range(100):  # the shell starts its background sleep
            if len(group(child)) == 3:
                break
            time.sleep(0.05)
        members = group(child)
        assert len(members) == 3
        parent.kill()
        parent.wait()
        time.sleep(0.5)
        assert group(child) == members  # SIGTERM is ignored; the grace (1 s) is not over
        wait_empty(child, 10)  # then SIGKILL to the whole group, the background sleep too
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGKILL)


def test_a_released_child_is_left_alone_and_its_watchdog_exits():
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        line = Lifeline(child.pid, grace_s=0.1)
        assert line.release() == RELEASED
        assert line.release() == RELEASED  # twice is harmless
        time.sleep(0.3)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_the_watchdog_exits_when_its_child_exits():
    child = subprocess.Popen(["sleep", "0.2"], start_new_session=True)
    line = Lifeline(child.pid)
    assert line.watchdog.wait(10) == CHILD_EXITED  # a zombie has exited: no need to wait for the reaping
    assert child.wait() == 0
    assert line.release() == CHILD_EXITED
