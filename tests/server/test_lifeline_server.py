"""A real tritonserver dies with the process that started it, also when that process is SIGKILLed
(cascade.server.lifeline): started from the main thread, from a worker thread that has exited, and by ``cascade
serve``. The server gets SIGTERM first (it drains and says so in its log); the server, its Python-backend stubs and the
watchdog are gone within a bounded time."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cascade.ops.soak import stubs
from cascade.server.launcher import free_ports

pytestmark = pytest.mark.server
#: The watchdog's grace (10 s) plus the server's own shutdown, with room for 2 busy cores.
GONE_WITHIN_S = 60
PARENT = """
import json, sys, threading, time
from pathlib import Path
from cascade.server.launcher import ServerOptions, TritonServer, free_ports
repo, log, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
http, grpc, metrics = free_ports(3)
opts = ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics, log_file=log)
server = TritonServer(opts)
if where == "thread":  # the thread that forks the server exits long before this process does
    starter = threading.Thread(target=server.start)
    starter.start()
    starter.join()
else:
    server.start()
print(json.dumps({"pid": server.pid}), flush=True)
time.sleep(900)
"""
ECHO_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
            for r in requests
        ]
"""
CONFIG = """
backend: "python"
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def alive(pid: int) -> bool:
    """Not exited (a zombie waiting for init to reap it has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def watchdogs_of(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
            if any(a.endswith(b"lifeline.py") for a in argv) and str(pid).encode() in argv and alive(int(entry)):
                found.append(int(entry))
    return found


@pytest.fixture
def repo(tmp_path):
    for name in ("echo_a", "echo_b"):  # two models: two stubs
        (tmp_path / "repo" / name / "1").mkdir(parents=True)
        (tmp_path / "repo" / name / "1" / "model.py").write_text(textwrap.dedent(ECHO_MODEL))
        (tmp_path / "repo" / name / "config.pbtxt").write_text(f'name: "{name}"\n{CONFIG}')
    return tmp_path / "repo"


def start_parent(where: str, repo: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """The process that starts the server, and the server's pid once it is ready."""
    if where == "cli":
        http, grpc, metrics = free_ports(3)
        args = ["-m", "cascade.cli.main", "serve", "--repo", str(repo), "--http-port", str(http),
                "--grpc-port", str(grpc), "--metrics-port", str(metrics)]  # fmt: skip
    else:
        args = ["-c", PARENT, str(repo), str(log), where]
    parent = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)
    for line in parent.stdout:
        if where == "cli" and (found := re.search(r"tritonserver ready in .* \(pid (\d+), log (\S+)\)", line)):
            log.symlink_to(found.group(2))
            return parent, int(found.group(1))
        if where != "cli" and line.startswith("{"):
            return parent, json.loads(line)["pid"]
    raise AssertionError(f"the parent exited with {parent.wait()} before the server was ready")


@pytest.mark.parametrize("where", ["main", "thread", "cli"])
def test_the_server_and_its_stubs_die_with_a_sigkilled_parent(repo, tmp_path, where):
    parent, pid = start_parent(where, repo, tmp_path / "server.log")
    try:
        children = stubs(pid)
        assert sorted(children.values()) == ["echo_a", "echo_b"]
        dogs = watchdogs_of(pid)
        assert len(dogs) == 1
        parent.kill()
        parent.wait()
        start = time.monotonic()
        # the watchdog exits just after the server it ended: wait for all three, not only the server and stubs
        while any(map(alive, [pid, *children, *dogs])) and time.monotonic() - start < GONE_WITHIN_S:
            time.sleep(0.1)
        took = time.monotonic() - start
        assert not alive(pid), f"tritonserver {pid} still runs {GONE_WITHIN_S} s after its parent was killed"
        assert not [s for s in children if alive(s)], "stubs outlived the server"
        assert not [d for d in dogs if alive(d)], f"the watchdog outlived the server by {GONE_WITHIN_S} s"
        assert "Signal (15) received" in (tmp_path / "server.log").read_text(errors="replace")  # drained first
        print(f"{where}: server and stubs gone {took:.1f} s after the parent's SIGKILL")
    finally:
        parent.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
