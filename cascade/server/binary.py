"""Find the ``tritonserver`` binary and prepare what it needs: backends, Python stub, environment.

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

import contextlib
import filecmp
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from cascade.errors import ServerError

#: Environment variable naming the ``tritonserver`` binary to use.
TRITONSERVER_ENV = "TRITONSERVER"
STUB_NAME = "triton_python_backend_stub"
PYTHON_BACKEND_LIB = "libtriton_python.so"


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


def _own_libpython_dir() -> str | None:
    """The folder of the running interpreter's own shared ``libpython`` (a pyenv or source build), or None for a
    system Python or a static build. The stub links ``libpython3.X.so.1.0`` by name and would otherwise take the
    system's: an older patch release whose C API lacks what this interpreter's extension modules call (Debian's
    3.11.2 under pyenv's 3.11.7: ``import ssl`` fails with "undefined symbol: _PyModule_Add")."""
    import sysconfig

    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not (sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and soname):
        return None
    if not (Path(libdir) / soname).is_file() or libdir in ("/usr/lib", "/lib", "/usr/lib64", "/usr/local/lib"):
        return None
    return libdir


def server_env(
    binary: Path | None = None, base: dict[str, str] | None = None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment for the server: the running interpreter's ``bin`` first on ``PATH`` (the Python
    backend stub runs the first ``python3`` there), its own shared libpython first on ``LD_LIBRARY_PATH`` (where it
    has one: :func:`_own_libpython_dir`) and, for the wheel's binary, its bundled libraries
    appended to ``LD_LIBRARY_PATH`` (as pytriton does; the binaries' RPATH already points there);
    ``extra`` (:meth:`ServerOptions.environment`) last."""
    env = dict(os.environ if base is None else base) | dict(extra or {})
    bin_dir = os.path.dirname(sys.executable)  # not resolved: a venv's bin, not the base install's
    rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != bin_dir]
    env["PATH"] = os.pathsep.join([bin_dir, *rest])
    own = _own_libpython_dir()
    if own is not None:  # first: the stub must embed the libpython this interpreter's stdlib was built with
        current = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != own]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([own, *current])
    libs = wheel_libs_dir()
    root = _wheel_root()
    is_wheel = binary is None or (root is not None and Path(binary).resolve().is_relative_to(root.resolve()))
    if libs is not None and is_wheel:
        current = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        if str(libs) not in current:
            env["LD_LIBRARY_PATH"] = os.pathsep.join([*current, str(libs)])
    return env
