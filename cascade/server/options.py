"""What ``tritonserver`` to run: :class:`ServerOptions`, its command line, and free ports to give it."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field
from pathlib import Path

from cascade.contract import (
    ADMIN_HEADER,
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    LLM_THREADS_ENV,
    RESTRICTED_PROTOCOLS,
)
from cascade.errors import InvalidInput
from cascade.server.binary import backend_dir_for, find_tritonserver, has_gpu

MODEL_CONTROL_MODES = ("none", "explicit")
#: Flags that quiet a CPU-only host (pinned memory needs the CUDA driver; GPU metrics need NVML/DCGM).
CPU_ONLY_FLAGS = ("--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false")
METRICS_SUMMARY = "summary_latencies=true"


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
    #: models size themselves from the server's cores (``cascade.runtime.sizing``), or take the inherited variable.
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
