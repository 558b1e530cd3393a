"""The host around the server: free ports, the size of ``/dev/shm``, the threads the models will use, and the
crash records of Python-backend models that died here recently."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

from cascade import contract
from cascade.doctor.result import FAIL, INFO, OK, WARN, Result
from cascade.errors import ConfigError

#: The server's ports and the ``cascade serve`` option that moves each.
DEFAULT_PORTS = (
    ("--http-port", contract.DEFAULT_HTTP_PORT),
    ("--grpc-port", contract.DEFAULT_GRPC_PORT),
    ("--metrics-port", contract.DEFAULT_METRICS_PORT),
)
SHM_DIR = Path("/dev/shm")
#: Below this, the Python backend's shared-memory regions (one per model instance, growing with requests) run out.
MIN_SHM_BYTES = 256 * 1024 * 1024
SHM_FIX = (
    "give the container more shared memory: docker run --shm-size=1g; Kubernetes: an emptyDir with medium: Memory "
    "mounted at /dev/shm (the Helm chart's shm.sizeLimit)"
)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now (bound and released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(ports: Sequence[tuple[str, int]] = DEFAULT_PORTS, host: str = "127.0.0.1") -> Result:
    """The ports ``cascade serve`` listens on: one in use is a warning naming the option that moves it."""
    busy = [(option, port) for option, port in ports if not port_free(port, host)]
    listed = ", ".join(f"{port} ({option})" for option, port in ports)
    if not busy:
        return Result("ports", OK, f"free on {host}: {listed}")
    used = ", ".join(f"{port}" for _, port in busy)
    options = " ".join(f"{option} N" for option, _ in busy)
    return Result(
        "ports", WARN, f"in use on {host}: {used} (another server?)",
        f"stop what listens there, or `cascade serve {options}` (cascade demo picks free ports itself)",
    )  # fmt: skip


def check_shm(path: Path = SHM_DIR, minimum: int = MIN_SHM_BYTES) -> Result:
    """The Python backend exchanges tensors through ``/dev/shm``: Docker's default 64 MB is too small."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return Result("/dev/shm", FAIL, f"cannot read {path}: {exc}", SHM_FIX)
    size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    detail = f"{size / 2**20:,.0f} MB, {free / 2**20:,.0f} MB free"
    if size < minimum:
        return Result("/dev/shm", FAIL, f"{detail}: below {minimum / 2**20:.0f} MB", SHM_FIX)
    if free < minimum:
        fix = "cascade serve removes the regions of killed servers when it starts; see what else fills /dev/shm"
        return Result("/dev/shm", WARN, f"{detail}: under {minimum / 2**20:.0f} MB free", fix)
    return Result("/dev/shm", OK, detail)


def check_threads(cores: int | None = None, environ: Mapping[str, str] | None = None) -> Result:
    """The threads a server here gives each model (:mod:`cascade.runtime.sizing`): llama.cpp's ``n_threads``, ONNX
    Runtime's for the text models and for the models over embeddings. More llama.cpp threads than cores is a
    warning: ggml's threads spin-wait, and an oversubscribed model slows down several times."""
    from cascade.runtime import sizing

    env = os.environ if environ is None else environ
    cores = sizing.server_cores() if cores is None else cores
    try:
        llm = sizing.llm_threads(cores, env)
    except ConfigError as exc:
        return Result("threads", FAIL, str(exc), f"unset ${contract.LLM_THREADS_ENV} or set it to a positive integer")
    detail = (
        f"{cores} cores: llama.cpp n_threads {llm} per LLM, ONNX Runtime {sizing.onnx_threads(True, cores)} "
        f"(embedder, encoder) and {sizing.onnx_threads(False, cores)} (logreg, xgboost)"
    )
    if llm > cores:
        return Result(
            "threads", WARN, f"{detail}; ${contract.LLM_THREADS_ENV} asks for more threads than cores",
            f"unset ${contract.LLM_THREADS_ENV} (sized from the cores) or set it to {max(1, cores // 2)}",
        )  # fmt: skip
    return Result("threads", OK, detail)


def recent_crashes(limit: int = 5) -> Result | None:
    """The newest crash records of Python-backend models (:mod:`cascade.crash`), as information; None when there
    are none, or when this install has no crash records module."""
    try:
        from cascade.crash import recent
    except ImportError:
        return None
    try:
        records = recent(limit=limit)
    except OSError:
        return None
    if not records:
        return None
    import time

    lines = [f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(r.time))} {r.explanation()}" for r in records]
    return Result("recent crashes", INFO, "\n".join(lines), f"records in {records[0].path.parent}")
