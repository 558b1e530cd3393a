"""Start, supervise and stop a real ``tritonserver`` process; ``cascade serve`` runs one in the foreground.

Where the binary, its backends and the Python backend stub come from, and the environment the server gets, is
:mod:`cascade.server.binary`; what it is told (:class:`ServerOptions`, its command line, ports) is
:mod:`cascade.server.options`; the shared-memory cleanup before a start is :mod:`cascade.server.shm`. Their public
names are re-exported here, the import path other code uses.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import deque
from pathlib import Path
from typing import TextIO

from cascade.errors import ServerError
from cascade.server.binary import (
    PYTHON_BACKEND_LIB,
    STUB_NAME,
    TRITONSERVER_ENV,
    backend_dir_for,
    find_tritonserver,
    has_gpu,
    prepare_python_backend,
    server_env,
    supported_flags,
    wheel_libs_dir,
)
from cascade.server.lifeline import Lifeline
from cascade.server.options import (
    CPU_ONLY_FLAGS,
    METRICS_SUMMARY,
    MODEL_CONTROL_MODES,
    ServerOptions,
    free_port,
    free_ports,
    server_command,
)
from cascade.server.shm import SHM_DIR, SHM_PREFIX, remove_stale_shm

#: This module's API and the names it re-exports (``cascade.server.launcher`` is the import path other code uses).
__all__ = [
    "CPU_ONLY_FLAGS",
    "ERROR_TAIL_LINES",
    "METRICS_SUMMARY",
    "MODEL_CONTROL_MODES",
    "PYTHON_BACKEND_LIB",
    "SHM_DIR",
    "SHM_PREFIX",
    "STUB_NAME",
    "TRITONSERVER_ENV",
    "ServerOptions",
    "TritonServer",
    "backend_dir_for",
    "find_tritonserver",
    "free_port",
    "free_ports",
    "has_gpu",
    "prepare_python_backend",
    "remove_stale_shm",
    "serve",
    "server_command",
    "server_env",
    "supported_flags",
    "wheel_libs_dir",
]

#: Lines of the server log quoted in a :class:`ServerError`.
ERROR_TAIL_LINES = 40
#: Error lines every CPU-only start logs; left out of the error summary of a :class:`ServerError`.
_BENIGN_ERRORS = ("CudaDriverHelper has not been initialized",)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- the process ---------------------------------------------------------------------------------
def _read_tail(path: Path, n: int, max_bytes: int = 1 << 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    return list(deque(data.decode("utf-8", errors="replace").splitlines(), maxlen=n))


def _error_lines(path: Path, limit: int = 20, max_bytes: int = 4 << 20) -> list[str]:
    """Triton's error lines (``E<mmdd> ...``) and the final ``error: ...`` line of the log."""
    lines = _read_tail(path, 1 << 30, max_bytes)
    errors = [
        line
        for line in lines
        if (line[:1] == "E" and line[1:5].isdigit() or line.startswith("error:"))
        and not any(benign in line for benign in _BENIGN_ERRORS)
    ]
    return list(dict.fromkeys(errors))[-limit:]


_LIVE: weakref.WeakSet[TritonServer] = weakref.WeakSet()


@atexit.register
def _stop_live_servers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(timeout_s=10)


class TritonServer:
    """A ``tritonserver`` child process; a context manager that starts and stops it."""

    def __init__(self, opts: ServerOptions, binary: Path | None = None) -> None:
        self.opts = opts
        self.binary = Path(binary) if binary is not None else find_tritonserver()
        self.backend_dir = opts.backend_directory or backend_dir_for(self.binary)
        self.log_path: Path | None = opts.log_file
        self.process: subprocess.Popen | None = None
        self._lifeline: Lifeline | None = None
        #: Seconds from launch to ready, once started.
        self.startup_s: float | None = None

    # urls -----------------------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc``."""
        return self.opts.grpc_url

    @property
    def http_url(self) -> str:
        return self.opts.http_url

    @property
    def metrics_url(self) -> str:
        return self.opts.metrics_url

    @property
    def urls(self) -> dict[str, str]:
        return {"grpc": self.grpc_url, "http": self.http_url, "metrics": self.metrics_url}

    # state ----------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def is_ready(self, timeout_s: float = 2.0) -> bool:
        try:
            with _NO_PROXY.open(f"{self.http_url}/v2/health/ready", timeout=timeout_s) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def command(self) -> list[str]:
        return server_command(self.opts, self.binary, supported_flags(self.binary) or None)

    def log_tail(self, n: int = ERROR_TAIL_LINES) -> str:
        return "" if self.log_path is None else "\n".join(_read_tail(self.log_path, n))

    # lifecycle ------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 300) -> TritonServer:
        """Launch the server and wait until ``/v2/health/ready``; :class:`ServerError` otherwise."""
        if self.is_running():
            raise ServerError(f"tritonserver already running (pid {self.pid})")
        if not self.opts.repository.is_dir():
            raise ServerError(f"model repository {self.opts.repository} is not a directory")
        prepare_python_backend(self.backend_dir)
        from cascade.repository.journal import recover  # an export killed mid-commit: back to one version

        for done in recover(self.opts.repository):
            print(f"cascade: {done}", file=sys.stderr)
        from cascade.repository.writer import refresh_backends  # a repository built by another version

        if changed := refresh_backends(self.opts.repository):
            print(f"cascade: updated the model.py glue of {len(changed)} models to this version", file=sys.stderr)
        removed = remove_stale_shm()
        if removed:
            print(f"cascade: removed {len(removed)} shared-memory regions left by killed servers", file=sys.stderr)
        cmd = self.command()
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            try:
                # Own session: a terminal's Ctrl-C reaches only us; serve() forwards it once.
                self.process = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=server_env(self.binary, extra=self.opts.environment()),
                    start_new_session=True,
                )
            except OSError as exc:
                raise ServerError(f"cannot run {cmd[0]}: {exc}") from exc
        try:  # a watchdog ends the server when this process dies, even by SIGKILL
            self._lifeline = Lifeline(self.process.pid)
        except OSError as exc:
            self.process.kill()
            self.process.wait()
            raise ServerError(f"cannot start the server's watchdog: {exc}") from exc
        _LIVE.add(self)
        deadline = started + timeout_s
        delay = 0.05
        while True:
            code = self.process.poll()
            if code is not None:
                self._lifeline.release()
                raise ServerError(self._failure(f"tritonserver exited with code {code} before becoming ready"))
            if self.is_ready():
                self.startup_s = time.monotonic() - started
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(self._failure(f"tritonserver not ready after {timeout_s:g} s (stopped)"))
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _failure(self, headline: str) -> str:
        parts = [f"{headline}; log: {self.log_path}", "command: " + " ".join(self.command())]
        errors = _error_lines(self.log_path) if self.log_path else []
        if errors:
            parts += ["errors:", *errors]
        parts += [f"--- last {ERROR_TAIL_LINES} lines of the log ---", self.log_tail(ERROR_TAIL_LINES)]
        return "\n".join(parts)

    def send_signal(self, sig: int) -> None:
        if self.is_running():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def wait(self, timeout_s: float | None = None) -> int:
        if self.process is None:
            raise ServerError("tritonserver was not started")
        return self.process.wait(timeout_s)

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM (Triton drains in-flight requests), wait, then SIGKILL. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                self.process.wait()
        if self._lifeline is not None:
            self._lifeline.release()
            self._lifeline = None
        _LIVE.discard(self)
        return self.process.returncode

    def __enter__(self) -> TritonServer:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- the CLI command -----------------------------------------------------------------------------
class _LogFollower(threading.Thread):
    """Copies what the server writes to its log file onto ``out`` (e.g. for ``kubectl logs``)."""

    def __init__(self, path: Path, out: TextIO) -> None:
        super().__init__(name="tritonserver-log", daemon=True)
        self.path, self.out = path, out
        self._stop_event = threading.Event()

    def run(self) -> None:
        with open(self.path, "rb") as f:
            while True:
                chunk = f.read(1 << 16)
                if chunk:
                    with contextlib.suppress(Exception):
                        self.out.write(chunk.decode("utf-8", errors="replace"))
                        self.out.flush()
                    continue
                if self._stop_event.is_set():
                    return
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def _exit_code(code: int | None) -> int:
    if code is None:
        return 1
    return 128 - code if code < 0 else code  # killed by a signal: the shell's 128+N


def _wait_interruptibly(server: TritonServer, poll_s: float = 0.25) -> int:
    """Wait for the server to exit without blocking in ``waitpid``: a signal that the kernel hands
    to another thread (gRPC's, the log follower) only sets a flag, and Python runs the handler when
    the main thread is back in the interpreter, which a blocking ``waitpid`` would never be."""
    while True:
        try:
            return server.wait(poll_s)
        except subprocess.TimeoutExpired:
            continue


def serve(
    opts: ServerOptions,
    *,
    timeout_s: float = 300,
    follow_log: bool = True,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``cascade serve``: start, print the endpoints, run until the server exits or a signal arrives.

    SIGINT/SIGTERM are forwarded to the server (which drains in flight requests and exits); a second
    one kills it. Returns the server's exit code; non-zero, with the log tail on ``err``, when it
    failed to start (e.g. a model failed to load) or died.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        server = TritonServer(opts)
    except ServerError as exc:
        print(f"error: {exc}", file=err)
        return 1
    received: list[int] = []

    def forward(signum, _frame) -> None:
        received.append(signum)
        server.send_signal(signum if len(received) == 1 else signal.SIGKILL)

    in_main = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, forward)
    follower = None
    try:
        if follow_log and opts.log_file is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            server.log_path = Path(name)
        if follow_log:
            server.log_path.parent.mkdir(parents=True, exist_ok=True)
            server.log_path.write_bytes(b"")  # the follower must not replay an older run's log
            follower = _LogFollower(server.log_path, out)
            follower.start()
        try:
            server.start(timeout_s)
        except ServerError as exc:
            if follower:
                follower.stop()
                follower = None
            if received:  # interrupted while loading: not a failure of the server
                server.stop()
                return _exit_code(server.returncode)
            print(f"error: {exc}", file=err)
            return _exit_code(server.returncode) or 1
        if received:  # a signal arrived before the process existed
            server.send_signal(signal.SIGTERM)
        print(
            f"tritonserver ready in {server.startup_s:.1f} s (pid {server.pid}, log {server.log_path})\n"
            f"  gRPC    {server.grpc_url}\n  HTTP    {server.http_url}\n  metrics {server.metrics_url}",
            file=out,
            flush=True,
        )
        code = _wait_interruptibly(server)
        if follower:
            follower.stop()
            follower = None
        if code != 0 and not received:
            print(
                f"error: tritonserver exited with code {code}; last {ERROR_TAIL_LINES} lines of "
                f"{server.log_path}:\n{server.log_tail(ERROR_TAIL_LINES)}",
                file=err,
            )
        return _exit_code(code)
    finally:
        if follower:
            follower.stop()
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
