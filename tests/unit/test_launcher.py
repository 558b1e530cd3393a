"""cascade.server.launcher: command line and environment, without a server (a real tritonserver:
tests/server/test_launcher_server.py)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from cascade.contract import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT
from cascade.errors import InvalidInput, ServerError
from cascade.server import binary as server_binary
from cascade.server import launcher
from cascade.server.launcher import (
    CPU_ONLY_FLAGS,
    ServerOptions,
    TritonServer,
    backend_dir_for,
    find_tritonserver,
    free_port,
    free_ports,
    prepare_python_backend,
    server_command,
    server_env,
)

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def _executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def fake_install(tmp_path) -> Path:
    """A wheel-like layout: <root>/bin/tritonserver, <root>/backends/python, per-version stubs."""
    root = tmp_path / "tritonserver"
    _executable(root / "bin" / "tritonserver")
    (root / "backends" / "python").mkdir(parents=True)
    (root / "backends" / "python" / "libtriton_python.so").write_bytes(b"lib")
    for version in (PY, "3.99"):
        _executable(root / "python_backend_stubs" / version / "triton_python_backend_stub", f"stub {version}")
    return root


def _opts(tmp_path, **kw) -> ServerOptions:
    kw.setdefault("gpu", False)
    return ServerOptions(repository=tmp_path, **kw)


# --- unit: options and command -------------------------------------------------------------------
def test_options_defaults_come_from_contract(tmp_path):
    opts = _opts(tmp_path)
    assert (opts.http_port, opts.grpc_port, opts.metrics_port) == (
        DEFAULT_HTTP_PORT,
        DEFAULT_GRPC_PORT,
        DEFAULT_METRICS_PORT,
    )
    assert opts.host == "127.0.0.1"
    assert opts.model_control_mode == "none"
    assert opts.grpc_url == f"127.0.0.1:{DEFAULT_GRPC_PORT}"
    assert opts.http_url == f"http://127.0.0.1:{DEFAULT_HTTP_PORT}"


def test_options_wildcard_host_connects_on_loopback(tmp_path):
    opts = _opts(tmp_path, host="0.0.0.0", grpc_port=9001)
    assert opts.grpc_url == "127.0.0.1:9001"


@pytest.mark.parametrize(
    "kw",
    [
        {"model_control_mode": "poll"},
        {"model_control_mode": "explicit", "load_models": ["*", "a"]},
        {"http_port": 0},
        {"grpc_port": 70000},
    ],
)
def test_options_reject_invalid_values(tmp_path, kw):
    with pytest.raises(InvalidInput):
        _opts(tmp_path, **kw)


def test_server_command_none_mode_cpu(tmp_path, fake_install):
    binary = fake_install / "bin" / "tritonserver"
    opts = _opts(tmp_path, http_port=1, grpc_port=2, metrics_port=3, log_verbose=1, extra_args=["--id=x"])
    cmd = server_command(opts, binary)
    assert cmd[0] == str(binary)
    assert f"--model-repository={tmp_path}" in cmd
    assert "--model-control-mode=none" in cmd
    assert not any(arg.startswith("--load-model") for arg in cmd)
    assert f"--backend-directory={(fake_install / 'backends').resolve()}" in cmd
    for flag, port in (("http", 1), ("grpc", 2), ("metrics", 3)):
        assert f"--{flag}-address=127.0.0.1" in cmd
        assert f"--{flag}-port={port}" in cmd
    for flag in CPU_ONLY_FLAGS:
        assert flag in cmd
    assert "--log-verbose=1" in cmd
    assert cmd[-1] == "--id=x"  # extra args last, so they win


def test_server_command_explicit_mode(tmp_path, fake_install):
    binary = fake_install / "bin" / "tritonserver"
    cmd = server_command(_opts(tmp_path, model_control_mode="explicit"), binary)
    assert "--model-control-mode=explicit" in cmd
    assert "--load-model=*" in cmd
    cmd = server_command(_opts(tmp_path, model_control_mode="explicit", load_models=["a", "b"]), binary)
    assert [arg for arg in cmd if arg.startswith("--load-model")] == ["--load-model=a", "--load-model=b"]
    cmd = server_command(_opts(tmp_path, model_control_mode="explicit", load_models=[]), binary)
    assert not any(arg.startswith("--load-model") for arg in cmd)


def test_server_command_gpu_and_unsupported_flags(tmp_path, fake_install):
    binary = fake_install / "bin" / "tritonserver"
    cmd = server_command(_opts(tmp_path, gpu=True), binary)
    assert not any(flag in cmd for flag in CPU_ONLY_FLAGS)
    supported = frozenset({"--http-address", "--grpc-address", "--pinned-memory-pool-byte-size"})
    cmd = server_command(_opts(tmp_path, host="0.0.0.0"), binary, supported)
    assert "--http-address=0.0.0.0" in cmd and "--grpc-address=0.0.0.0" in cmd
    assert not any(arg.startswith("--metrics-address") for arg in cmd)
    assert "--pinned-memory-pool-byte-size=0" in cmd
    assert "--allow-gpu-metrics=false" not in cmd
    assert "--metrics-port=8002" in cmd  # essential flags are never dropped


def test_server_command_without_backends_dir(tmp_path):
    binary = _executable(tmp_path / "elsewhere" / "tritonserver")
    assert backend_dir_for(binary) is None
    assert not any(arg.startswith("--backend-directory") for arg in server_command(_opts(tmp_path), binary))


# --- unit: environment and discovery -------------------------------------------------------------
def test_server_env_puts_interpreter_bin_first():
    bin_dir = os.path.dirname(sys.executable)
    env = server_env(base={"PATH": f"/usr/bin:{bin_dir}:/bin", "OTHER": "1"})
    assert env["PATH"].split(os.pathsep) == [bin_dir, "/usr/bin", "/bin"]
    assert env["OTHER"] == "1"


def test_server_env_adds_wheel_libs_only_for_the_wheel_binary(tmp_path):
    libs = launcher.wheel_libs_dir()
    assert libs is not None, "the nvidia-pytriton wheel (a required dependency) or its bundled libraries are missing"
    own = [server_binary._own_libpython_dir()] if server_binary._own_libpython_dir() else []
    wheel_env = server_env(find_wheel_binary(), base={"PATH": "/bin", "LD_LIBRARY_PATH": "/x"})
    assert wheel_env["LD_LIBRARY_PATH"].split(os.pathsep) == [*own, "/x", str(libs)]
    other = server_env(_executable(tmp_path / "bin" / "tritonserver"), base={"PATH": "/bin"})
    assert other.get("LD_LIBRARY_PATH", "").split(os.pathsep) == (own or [""])


def test_the_stub_embeds_this_interpreters_own_libpython(tmp_path):
    """With a shared libpython of its own (pyenv), the interpreter's folder comes first, so that the stub does not
    take the system's older one (whose C API the stdlib's ``_ssl`` of a newer patch release does not find)."""
    import sysconfig

    own = server_binary._own_libpython_dir()
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and not sysconfig.get_config_var("LIBDIR").startswith("/usr"):
        assert own == sysconfig.get_config_var("LIBDIR")
        assert (Path(own) / sysconfig.get_config_var("INSTSONAME")).is_file()
    else:
        assert own is None


def test_llm_threads_reach_the_server_environment(tmp_path, fake_install, monkeypatch):
    from cascade.contract import LLM_THREADS_ENV

    monkeypatch.delenv(LLM_THREADS_ENV, raising=False)
    assert _opts(tmp_path).environment() == {}
    opts = _opts(tmp_path, llm_threads=3)
    assert opts.environment() == {LLM_THREADS_ENV: "3"}
    assert server_env(base={"PATH": "/bin"}, extra=opts.environment())[LLM_THREADS_ENV] == "3"
    # The process itself: a stand-in tritonserver writes its environment and exits.
    dump = tmp_path / "env.txt"
    binary = _executable(tmp_path / "bin" / "tritonserver", f"#!/bin/sh\nenv > {dump}\nexit 3\n")
    http, grpc, metrics = free_ports(3)  # not the defaults: a real server on this machine may hold them
    opts = _opts(
        tmp_path,
        llm_threads=3,
        backend_directory=fake_install / "backends",
        log_file=tmp_path / "log",
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
    )
    with pytest.raises(ServerError):
        TritonServer(opts, binary).start(timeout_s=10)
    assert f"{LLM_THREADS_ENV}=3" in dump.read_text().splitlines()


@pytest.mark.parametrize("threads", [0, -2, 1.5, True, "2"])
def test_llm_threads_must_be_a_positive_integer(tmp_path, threads):
    with pytest.raises(InvalidInput, match="llm_threads"):
        _opts(tmp_path, llm_threads=threads)


def find_wheel_binary() -> Path:
    root = server_binary._wheel_root()
    assert root is not None
    return root / "bin" / "tritonserver"


def test_find_tritonserver_env_missing(monkeypatch, tmp_path):
    missing = tmp_path / "no" / "tritonserver"
    monkeypatch.setenv("TRITONSERVER", str(missing))
    with pytest.raises(ServerError, match="TRITONSERVER") as info:
        find_tritonserver()
    assert str(missing) in str(info.value)


def test_find_tritonserver_env_and_path(monkeypatch, tmp_path):
    chosen = _executable(tmp_path / "mine" / "tritonserver")
    monkeypatch.setenv("TRITONSERVER", str(chosen))
    assert find_tritonserver() == chosen
    monkeypatch.delenv("TRITONSERVER")
    on_path = _executable(tmp_path / "pathdir" / "tritonserver")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert find_tritonserver() == on_path
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    if server_binary._wheel_root() is not None:
        assert find_tritonserver() == find_wheel_binary()


def test_prepare_python_backend_copies_the_right_stub_once(fake_install):
    backends = fake_install / "backends"
    stub = prepare_python_backend(backends)
    assert stub == backends / "python" / "triton_python_backend_stub"
    assert stub.read_text() == f"stub {PY}"
    assert os.access(stub, os.X_OK)
    mtime = stub.stat().st_mtime_ns
    assert prepare_python_backend(backends) == stub
    assert stub.stat().st_mtime_ns == mtime  # idempotent
    stub.write_text("stub from another python")
    prepare_python_backend(backends)
    assert stub.read_text() == f"stub {PY}"  # a wrong stub is replaced


def test_prepare_python_backend_without_a_stub_for_this_python(fake_install):
    (fake_install / "python_backend_stubs" / PY / "triton_python_backend_stub").unlink()
    with pytest.raises(ServerError, match=rf"Python {PY}.*3\.99"):
        prepare_python_backend(fake_install / "backends")


def test_prepare_python_backend_nothing_to_do(tmp_path):
    assert prepare_python_backend(None) is None
    assert prepare_python_backend(tmp_path) is None  # no python backend there


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert isinstance(free_port(), int)
