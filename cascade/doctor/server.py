"""What ``tritonserver`` needs here: the binary, the Python-backend stub for this Python, the ``libpython`` the stub
links against, and a NumPy the stub reads correctly. Nothing is copied or started: these only look."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path

from cascade.doctor.result import FAIL, OK, Result
from cascade.errors import CascadeError, ConfigError

TRITON_FIX = "pip install nvidia-pytriton==0.7.0 (make setup does), or set $TRITONSERVER to a tritonserver binary"


def libpython_name() -> str:
    """The shared libpython of this Python (``libpython3.11.so.1.0``), which the Python-backend stub links against."""
    return f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"


def find_library(name: str) -> str | None:
    """Where the dynamic loader finds ``name``: ``ldconfig -p``, then the folders of ``$LD_LIBRARY_PATH`` and
    the nvidia-pytriton wheel's own libraries (the server's environment adds them), then ctypes' lookup."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if line.strip().startswith(name + " ") and "=>" in line:
            return line.split("=>", 1)[1].strip()
    from cascade.server.binary import wheel_libs_dir

    folders = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    folders += [str(d) for d in [wheel_libs_dir()] if d is not None]
    for folder in folders:
        if (Path(folder) / name).is_file():
            return str(Path(folder) / name)
    return ctypes.util.find_library(name.removeprefix("lib").split(".so")[0])


def check_tritonserver() -> Result:
    from cascade.server.binary import find_tritonserver

    try:
        binary = find_tritonserver()
    except CascadeError as exc:
        return Result("tritonserver", FAIL, str(exc), TRITON_FIX)
    if not os.access(binary, os.X_OK):
        return Result("tritonserver", FAIL, f"{binary} is not executable", f"chmod +x {binary}, or {TRITON_FIX}")
    return Result("tritonserver", OK, str(binary))


def check_stub(binary: Path | None = None) -> Result:
    """The Python-backend stub the server will run for this Python: the wheel's per-version stub
    (``python_backend_stubs/3.X/``, copied in place when the server starts) or one already in place (a container)."""
    from cascade.server.binary import PYTHON_BACKEND_LIB, STUB_NAME, backend_dir_for, find_tritonserver

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    name = "python backend stub"
    try:
        binary = find_tritonserver() if binary is None else Path(binary)
    except CascadeError:
        return Result(name, FAIL, "no tritonserver, so no Python backend", TRITON_FIX)
    backends = backend_dir_for(binary)
    if backends is None or not (backends / "python" / PYTHON_BACKEND_LIB).is_file():
        where = backends / "python" if backends is not None else f"beside {binary}"
        return Result(name, FAIL, f"no {PYTHON_BACKEND_LIB} in {where}", TRITON_FIX)
    stubs = backends.parent / "python_backend_stubs"
    source, target = stubs / version / STUB_NAME, backends / "python" / STUB_NAME
    if source.is_file():
        return Result(name, OK, f"{source} (for Python {version})")
    if target.is_file() and not stubs.is_dir():
        return Result(name, OK, f"{target} (the server's own)")
    available = sorted(p.parent.name for p in stubs.glob(f"*/{STUB_NAME}"))
    return Result(
        name, FAIL, f"no stub for Python {version} (expected {source}); stubs for: {', '.join(available) or 'none'}",
        f"run the server's Python version ({', '.join(available) or 'see the Triton release'}); this project uses 3.11",
    )  # fmt: skip


def check_libpython(find: Callable[[str], str | None] | None = None) -> Result:
    """The ``libpython`` the Python-backend stub links against, found by ``find`` (default :func:`find_library`)."""
    name = libpython_name()
    found = (find or find_library)(name)
    if not found:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return Result(
            "libpython", FAIL, f"{name} not found: the Python-backend stub cannot start, and every Python model fails",
            f"apt-get install libpython{version} (make setup does)",
        )  # fmt: skip
    return Result("libpython", OK, found)


def check_numpy(version: str | None = None, environ: Mapping[str, str] | None = None) -> Result:
    """The NumPy the models import, against the rule of :func:`cascade.errors.check_numpy` (Triton 2.51's stub
    needs NumPy 1.x)."""
    from cascade.errors import check_numpy as rule

    if version is None:
        try:
            version = metadata.version("numpy")
        except metadata.PackageNotFoundError:
            return Result("numpy", FAIL, "numpy is not installed", "pip install numpy==1.26.4 (make setup does)")
    try:
        rule(version, dict(os.environ if environ is None else environ))
    except ConfigError as exc:
        message = str(exc)
        detail, _, fix = message.partition("; ")
        return Result("numpy", FAIL, detail, fix or message)
    return Result("numpy", OK, version)
