"""Find, prepare, start and stop a real ``tritonserver`` process.

Two layouts are supported:

* the NGC container: ``tritonserver`` on ``PATH`` (``/opt/tritonserver/bin``) with its own
  ``/opt/tritonserver/backends``;
* the ``nvidia-pytriton`` wheel: ``pytriton/tritonserver/bin/tritonserver`` with
  ``pytriton/tritonserver/backends/python/libtriton_python.so``; the Python backend stub for the
  running interpreter is shipped beside it in ``python_backend_stubs/3.X/`` and is copied next to
  ``libtriton_python.so`` by :func:`prepare_python_backend`.

The Python backend stub embeds the system ``libpython3.X.so`` and takes its ``sys.prefix`` from the
first ``python3`` on ``PATH`` (``PYTHONPATH`` is ignored), so :func:`server_env` puts the directory
of the running interpreter first on ``PATH``: models then import from this virtual environment.
"""

from __future__ import annotations

import atexit
import contextlib
import filecmp
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TextIO

from cascade.contract import (
    ADMIN_HEADER,
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    LLM_THREADS_ENV,
    RESTRICTED_PROTOCOLS,
)
from cascade.errors import InvalidInput, ServerError

#: Environment variable naming the ``tritonserver`` binary to use.
TRITONSERVER_ENV = "TRITONSERVER"
STUB_NAME = "triton_python_backend_stub"
PYTHON_BACKEND_LIB = "libtriton_python.so"
MODEL_CONTROL_MODES = ("none", "explicit")
#: Lines of the server log quoted in a :class:`ServerError`.
ERROR_TAIL_LINES = 40
#: Flags that quiet a CPU-only host (pinned memory needs the CUDA driver; GPU metrics need NVML/DCGM).
CPU_ONLY_FLAGS = ("--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false")
METRICS_SUMMARY = "summary_latencies=true"
#: Error lines every CPU-only start logs; left out of the error summary of a :class:`ServerError`.
_BENIGN_ERRORS = ("CudaDriverHelper has not been initialized",)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- locating the binary -------------------------------------------------------------------------
def _wheel_root() -> Path | None:
    """``.../site-packages/pytriton/tritonserver`` of the nvidia-pytriton wheel, if installed."""
    try:
        spec = importlib.util.find_spec("pytriton")  # finds the package without importing it
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        root = Path(location) / "tritonserver"
        if (root / "bin" / "tritonserver").is_file():
            return root
    return None


def wheel_libs_dir() -> Path | None:
    """The wheel's bundled shared libraries (``site-packages/nvidia_pytriton.libs``), if any."""
    root = _wheel_root()
    if root is None:
        return None
    libs = root.parent.parent / "nvidia_pytriton.libs"
    return libs if libs.is_dir() else None


def find_tritonserver() -> Path:
    """``$TRITONSERVER``, else ``tritonserver`` on ``PATH``, else the nvidia-pytriton wheel's binary."""
    override = os.environ.get(TRITONSERVER_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ServerError(f"${TRITONSERVER_ENV}={override} does not exist (or is not a file)")
        if not os.access(path, os.X_OK):
            raise ServerError(f"${TRITONSERVER_ENV}={override} is not executable")
        return path.absolute()
    on_path = shutil.which("tritonserver")
    if on_path:
        return Path(on_path).absolute()
    root = _wheel_root()
    if root is not None:
        return root / "bin" / "tritonserver"
    raise ServerError(
        "tritonserver not found: set $TRITONSERVER, put tritonserver on PATH (NGC container) or install nvidia-pytriton"
    )


def backend_dir_for(binary: Path) -> Path | None:
    """The ``--backend-directory`` for ``binary``: ``<root>/backends`` beside ``<root>/bin``, if present.

    For the wheel this is the wheel's own backends directory (the server's default,
    ``/opt/tritonserver/backends``, does not exist outside the container); for the NGC container it
    is that default. ``None`` when the layout is unknown (let the server use its default).
    """
    resolved = Path(binary).resolve()
    if resolved.parent.name != "bin":
        return None
    backends = resolved.parent.parent / "backends"
    return backends if backends.is_dir() else None


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def prepare_python_backend(backend_dir: Path | None) -> Path | None:
    """Make sure the Python backend in ``backend_dir`` has a stub for the running Python.

    The wheel ships one stub per Python minor version in ``python_backend_stubs/3.X/``; the right one
    is copied beside ``libtriton_python.so`` when missing or different (atomic, idempotent). Returns
    the stub path, or ``None`` when ``backend_dir`` has no Python backend. A container whose backend
    already carries a stub and no per-version stubs is left alone.
    """
    if backend_dir is None:
        return None
    python_dir = Path(backend_dir) / "python"
    if not (python_dir / PYTHON_BACKEND_LIB).is_file():
        return None
    target = python_dir / STUB_NAME
    stubs_dir = Path(backend_dir).parent / "python_backend_stubs"
    source = stubs_dir / _python_version() / STUB_NAME
    if not source.is_file():
        if target.is_file() and not stubs_dir.is_dir():
            return target  # a container build: its stub matches its own Python
        available = sorted(p.parent.name for p in stubs_dir.glob(f"*/{STUB_NAME}"))
        raise ServerError(
            f"no Python backend stub for Python {_python_version()} (expected {source}); "
            f"stubs available: {', '.join(available) or 'none'}"
        )
    if target.is_file() and filecmp.cmp(source, target, shallow=False):
        return target
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{STUB_NAME}.", dir=python_dir)
        os.close(fd)
        shutil.copy2(source, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise ServerError(f"cannot install the Python backend stub {source} -> {target}: {exc}") from exc
    return target


@lru_cache(maxsize=8)
def supported_flags(binary: Path) -> frozenset[str]:
    """The long options ``binary --help`` lists (empty when that cannot be read)."""
    try:
        out = subprocess.run(
            [str(binary), "--help"], capture_output=True, text=True, timeout=60, env=server_env(binary)
        )
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    flags = set()
    for line in (out.stdout + out.stderr).splitlines():
        for word in line.split():
            if word.startswith("--") and len(word) > 2:
                flags.add(word.split("=", 1)[0])
    return frozenset(flags)


def has_gpu() -> bool:
    """Whether an NVIDIA device node is visible (cheap; no CUDA initialization)."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


# --- options and command -------------------------------------------------------------------------
@dataclass
class ServerOptions:
    repository: Path
    http_port: int = DEFAULT_HTTP_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    #: Bind address of the HTTP, gRPC and metrics endpoints.
    host: str = "127.0.0.1"
    #: "none": load every model at start, no changes later; "explicit": load ``load_models`` at
    #: start, clients may load/unload more later.
    model_control_mode: str = "none"
    #: Models to load at start in explicit mode (``["*"]``: all; ``[]``: none).
    load_models: list[str] = field(default_factory=lambda: ["*"])
    log_verbose: int = 0
    #: Appended last, so they override the flags set here.
    extra_args: list[str] = field(default_factory=list)
    #: Server stdout+stderr (also the Python models' prints); ``None``: a temporary file.
    log_file: Path | None = None
    #: ``None``: auto-detect; on a CPU-only host :data:`CPU_ONLY_FLAGS` are passed.
    gpu: bool | None = None
    #: ``None``: :func:`backend_dir_for` the binary.
    backend_directory: Path | None = None
    #: Restrict the admin protocols (``contract.RESTRICTED_PROTOCOLS``) to requests carrying this key in
    #: ``contract.ADMIN_HEADER``; inference, health and metadata stay open. ``None``: nothing restricted.
    admin_key: str | None = None
    #: TLS for gRPC: the server's certificate and private key (PEM); ``None``: plain gRPC.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Threads of each llama.cpp model, given to the server as ``$CASCADE_LLM_THREADS``; ``None``: the
    #: models size themselves from the server's cores (``cascade.sizing``), or take the inherited variable.
    llm_threads: int | None = None

    def __post_init__(self) -> None:
        self.repository = Path(self.repository).expanduser().absolute()
        if self.log_file is not None:
            self.log_file = Path(self.log_file)
        if self.backend_directory is not None:
            self.backend_directory = Path(self.backend_directory)
        if self.model_control_mode not in MODEL_CONTROL_MODES:
            raise InvalidInput(
                f"model_control_mode must be one of {MODEL_CONTROL_MODES}, got {self.model_control_mode!r}"
            )
        self.load_models = list(self.load_models)
        if "*" in self.load_models and len(self.load_models) > 1:
            raise InvalidInput("load_models: '*' (all models) cannot be combined with model names")
        self.extra_args = list(self.extra_args)
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 < int(port) < 65536:
                raise InvalidInput(f"{name} must be in 1..65535, got {port}")
        if self.gpu is None:
            self.gpu = has_gpu()
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInput("TLS needs both a certificate and its key")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None:
                setattr(self, name, Path(path).expanduser().absolute())
                if not getattr(self, name).is_file():
                    raise InvalidInput(f"{name.replace('_', ' ')} {path} not found")
        if self.admin_key is not None and (not self.admin_key or any(c in self.admin_key for c in " ,:=")):
            raise InvalidInput("admin key must be non-empty, without spaces, commas, colons or '='")
        if self.llm_threads is not None and (
            isinstance(self.llm_threads, bool) or not isinstance(self.llm_threads, int) or self.llm_threads < 1
        ):
            raise InvalidInput(f"llm_threads must be a positive integer, got {self.llm_threads!r}")

    def environment(self) -> dict[str, str]:
        """Variables the server process gets on top of :func:`server_env`'s."""
        return {} if self.llm_threads is None else {LLM_THREADS_ENV: str(self.llm_threads)}

    @property
    def connect_host(self) -> str:
        """Where a client on this machine reaches the server (a wildcard bind means loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    @property
    def grpc_url(self) -> str:
        return f"{self.connect_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.connect_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.connect_host}:{self.metrics_port}/metrics"


_ADDRESS_FLAGS = ("--http-address", "--grpc-address", "--metrics-address")


def server_command(
    opts: ServerOptions, binary: Path | None = None, supported: frozenset[str] | None = None
) -> list[str]:
    """The ``tritonserver`` command line for ``opts``.

    ``binary`` defaults to :func:`find_tritonserver`. ``supported`` (see :func:`supported_flags`)
    drops the optional flags (bind addresses, CPU-only quieting) a build does not know; ``None``
    keeps them all.
    """
    binary = Path(binary) if binary is not None else find_tritonserver()
    backend_dir = opts.backend_directory if opts.backend_directory is not None else backend_dir_for(binary)

    def optional(flag: str, value: str) -> list[str]:
        return [] if supported is not None and flag not in supported else [f"{flag}={value}"]

    cmd = [
        str(binary),
        f"--model-repository={opts.repository}",
        f"--model-control-mode={opts.model_control_mode}",
    ]
    if opts.model_control_mode == "explicit":
        cmd += [f"--load-model={name}" for name in opts.load_models]
    if backend_dir is not None:
        cmd.append(f"--backend-directory={backend_dir}")
    for flag, port in (
        ("--http", opts.http_port),
        ("--grpc", opts.grpc_port),
        ("--metrics", opts.metrics_port),
    ):
        cmd += optional(f"{flag}-address", opts.host)
        cmd.append(f"{flag}-port={int(port)}")
    if not opts.gpu:
        for flag_value in CPU_ONLY_FLAGS:
            flag, value = flag_value.split("=", 1)
            cmd += optional(flag, value)
    if opts.tls_cert is not None:
        cmd += ["--grpc-use-ssl=true", f"--grpc-server-cert={opts.tls_cert}", f"--grpc-server-key={opts.tls_key}"]
    if opts.admin_key:
        restriction = f"{','.join(RESTRICTED_PROTOCOLS)}:{ADMIN_HEADER}={opts.admin_key}"
        cmd += optional("--grpc-restricted-protocol", restriction)
        cmd += optional("--http-restricted-api", restriction)
    # p50/p90/p95/p99 latency summaries (nv_inference_request_summary_us etc.) for the Grafana dashboard.
    cmd += optional("--metrics-config", METRICS_SUMMARY)
    cmd.append(f"--log-verbose={int(opts.log_verbose)}")
    cmd += [str(arg) for arg in opts.extra_args]
    return cmd


def server_env(
    binary: Path | None = None, base: dict[str, str] | None = None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment for the server: the running interpreter's ``bin`` first on ``PATH`` (the Python
    backend stub runs the first ``python3`` there) and, for the wheel's binary, its bundled libraries
    appended to ``LD_LIBRARY_PATH`` (as pytriton does; the binaries' RPATH already points there);
    ``extra`` (:meth:`ServerOptions.environment`) last."""
    env = dict(os.environ if base is None else base) | dict(extra or {})
    bin_dir = os.path.dirname(sys.executable)  # not resolved: a venv's bin, not the base install's
    rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != bin_dir]
    env["PATH"] = os.pathsep.join([bin_dir, *rest])
    libs = wheel_libs_dir()
    root = _wheel_root()
    is_wheel = binary is None or (root is not None and Path(binary).resolve().is_relative_to(root.resolve()))
    if libs is not None and is_wheel:
        current = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        if str(libs) not in current:
            env["LD_LIBRARY_PATH"] = os.pathsep.join([*current, str(libs)])
    return env


# --- ports ---------------------------------------------------------------------------------------
def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free right now on ``host`` (all sockets held until all are chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


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


SHM_DIR = Path("/dev/shm")
#: The Python backend's shared-memory regions (one per stub, 1 MiB or more each).
SHM_PREFIX = "triton_python_backend_shm_region_"


def remove_stale_shm(shm_dir: Path = SHM_DIR, min_age_s: float = 60.0) -> list[str]:
    """Delete the Python backend's shared-memory regions that no live process maps any more.

    A server killed with SIGKILL (or by the OOM killer) cannot unlink its regions. In a pod, ``/dev/shm`` is a
    memory volume that outlives container restarts, so each crash would leak a few MiB of its size limit
    until Triton cannot start. Only regions of this user, older than ``min_age_s`` (a starting server may not
    have mapped its new ones yet) and mapped by no process are removed."""
    if not shm_dir.is_dir():
        return []
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # gone, or another user's process (whose regions are not ours to delete)
            continue
        for line in text.splitlines():
            if SHM_PREFIX in line:
                mapped.add(line.split(SHM_PREFIX, 1)[1].split()[0])
    removed = []
    now = time.time()
    for region in shm_dir.glob(f"{SHM_PREFIX}*"):
        try:
            info = region.stat()
            if (
                info.st_uid == os.getuid()
                and now - info.st_mtime > min_age_s
                and region.name[len(SHM_PREFIX) :] not in mapped
            ):
                region.unlink()
                removed.append(region.name)
        except OSError:
            continue
    return removed


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
        from cascade.export.journal import recover  # an export killed mid-commit: back to one version

        for done in recover(self.opts.repository):
            print(f"cascade: {done}", file=sys.stderr)
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
        _LIVE.add(self)
        deadline = started + timeout_s
        delay = 0.05
        while True:
            code = self.process.poll()
            if code is not None:
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
