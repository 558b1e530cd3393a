"""Crash records: a real process arms the record, dies of a real signal, and the message names signal, cause and fix."""

import os
import signal
import subprocess
import sys
import time

import pytest

from cascade import crash

DIE = """
import os, signal, sys, time
from cascade import crash
path = crash.arm(sys.argv[1], sys.argv[2], sys.argv[3])
print(path, flush=True)
sig = int(sys.argv[4])
if sig == 0:
    sys.exit(0)
if sig == signal.SIGKILL:
    time.sleep(60)
os.kill(os.getpid(), sig)
"""


def run(tmp_path, sig: int, model="llm_large", instance="llm_large_0_1"):
    proc = subprocess.Popen(
        [sys.executable, "-c", DIE, model, instance, str(tmp_path), str(int(sig))], stdout=subprocess.PIPE, text=True
    )
    path = proc.stdout.readline().strip()
    if sig == signal.SIGKILL:
        assert crash.recent(directory=tmp_path) == []  # alive: not a crash
        proc.kill()
    proc.wait(30)
    return proc.returncode, path


@pytest.mark.parametrize(
    "sig, name, words",
    [
        (signal.SIGILL, "SIGILL", "an instruction this CPU does not run"),
        (signal.SIGSEGV, "SIGSEGV", "a memory fault"),
        (signal.SIGABRT, "SIGABRT", "aborted"),
        (signal.SIGBUS, "SIGBUS", "/dev/shm"),
        (signal.SIGKILL, "SIGKILL", "likely out of memory"),
    ],
)
def test_a_process_that_dies_of_a_signal_leaves_a_record_that_names_it(tmp_path, sig, name, words):
    code, path = run(tmp_path, sig)
    assert code == -sig  # the handler re-raises: the process still dies of its signal
    [record] = crash.recent(directory=tmp_path)
    assert str(record.path) == path and record.signal == name and record.model == "llm_large"
    message = crash.explain("Stub process 'llm_large_0_1' is not healthy.", directory=tmp_path)
    assert message.startswith(f"llm_large: its process died with {name} (") and words in message
    if sig == signal.SIGILL:
        assert "rebuild llama-cpp-python portable" in message and "cascade doctor" in message
        assert "Current thread" in record.path.read_text()  # the traceback of the dying thread


def test_a_clean_exit_leaves_no_record(tmp_path):
    code, path = run(tmp_path, 0)
    assert code == 0 and not os.path.exists(path)
    assert crash.explain("Stub process 'llm_large_0_1' is not healthy.", directory=tmp_path) is None


def test_records_are_matched_by_instance_and_server(tmp_path):
    run(tmp_path, signal.SIGSEGV, model="sst2_encoder", instance="sst2_encoder_0_0")
    time.sleep(0.01)
    run(tmp_path, signal.SIGILL)
    assert "SIGSEGV" in crash.explain("Stub process 'sst2_encoder_0_0' is not healthy.", directory=tmp_path)
    assert crash.explain("Stub process 'other_0_0' is not healthy.", directory=tmp_path) is None
    assert crash.explain("some other error", directory=tmp_path) is None
    # The record's server is this test's process (the dying process's parent).
    assert len(crash.recent(directory=tmp_path, server_pid=os.getpid())) == 2
    assert crash.recent(directory=tmp_path, server_pid=1) == []
    assert [r.signal for r in crash.recent(directory=tmp_path)] == ["SIGILL", "SIGSEGV"]  # newest first


def test_an_unwritable_folder_does_not_stop_a_model(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert crash.arm("m", "m_0_0", blocker / "crashes") is None


def test_the_folder_comes_from_the_environment(tmp_path, monkeypatch):
    assert crash.crash_dir({crash.CRASH_DIR_ENV: str(tmp_path)}) == tmp_path
    monkeypatch.delenv(crash.CRASH_DIR_ENV, raising=False)
    monkeypatch.setenv("CASCADE_CACHE_DIR", str(tmp_path / "cache"))
    assert crash.crash_dir() == tmp_path / "cache" / "crashes"


def test_a_finalized_process_records_no_fault_while_it_exits(tmp_path):
    """The Python backend's stub may fault while it exits after ``finalize``: disarmed, that leaves no record."""
    script = DIE.replace("sig = int(sys.argv[4])", "crash.disarm()\nsig = int(sys.argv[4])")
    proc = subprocess.run([sys.executable, "-c", script, "m", "m_0_0", str(tmp_path), str(int(signal.SIGSEGV))])
    assert proc.returncode == -signal.SIGSEGV
    assert crash.recent(directory=tmp_path) == [] and list(tmp_path.iterdir()) == []
