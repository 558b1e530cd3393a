"""Shared fixtures: a small real sst2 task built once, served by a real tritonserver on free ports."""

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# OpenMP threads (XGBoost's, torch's) sleep instead of spinning while they wait: on 2 busy cores a spinning
# thread steals the core its partner needs (a 1.3 s XGBoost fit took 40 s with another job running).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def sst2_task():
    from cascade.tasks import load_task

    # A lower target than the demo's, so that the small calibration set keeps every tier enabled.
    return replace(load_task("sst2"), target=0.8)


@pytest.fixture(scope="session")
def built_repo(tmp_path_factory, sst2_task):
    from cascade_export.build.commands import build_task
    from cascade_export.build.stage import BuildOptions

    # The small embedder keeps the session's build quick; tests/server/test_wide_embedder.py serves the default one.
    options = BuildOptions(
        train_rows=400, calib_rows=400, encoder_epochs=1, progress=False, keep_all_tiers=True, embedder="minilm-l6"
    )
    reuse = os.environ.get("CASCADE_TEST_REPO")
    if not reuse:
        repo = tmp_path_factory.mktemp("repository") / "cpu"
        return repo, build_task(sst2_task, repo, options)
    # Developers: build once into this folder, then reuse it (skips the build of a few minutes). The test workers
    # (pytest-xdist) take turns: the first builds, the others wait on the lock and reuse.
    import fcntl

    repo = Path(reuse)
    repo.parent.mkdir(parents=True, exist_ok=True)
    with open(repo.parent / f".{repo.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        report = repo / "sst2" / "build_report.json"
        if report.is_file() and json.loads(report.read_text()).get("task_digest") == sst2_task.digest():
            from cascade.repository.writer import refresh_backends

            refresh_backends(repo)
            return repo, json.loads(report.read_text())
        return repo, build_task(sst2_task, repo, options)


@pytest.fixture(scope="session")
def server(built_repo):
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports

    repo, _ = built_repo
    http, grpc, metrics = free_ports(3)
    opts = ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)
    with TritonServer(opts) as srv:
        yield srv


@pytest.fixture
def client(server):
    from cascade_client import CascadeClient

    with CascadeClient(server.grpc_url) as c:
        yield c


@pytest.fixture(scope="session")
def explicit_server(built_repo, tmp_path_factory):
    """A second server, in explicit model-control mode: tests may unload, reload and reconfigure its models
    (each test leaves them as it found them)."""
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports

    repo, _ = built_repo
    http, grpc, metrics_port = free_ports(3)
    opts = ServerOptions(
        repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics_port, model_control_mode="explicit",
        log_file=tmp_path_factory.mktemp("explicit") / "server.log",
        # A killed stub (tests/server/test_failures.py) makes Triton 2.51 wait out its whole exit timeout (30 s).
        extra_args=["--exit-timeout-secs=5"],
    )  # fmt: skip
    with TritonServer(opts) as server:
        yield server


@pytest.fixture
def reconfigure(explicit_server):
    """``with reconfigure(task, name=value, ...)``: the task's gate reloaded with these parameters changed (a config
    override through the load API; ``None`` removes one), and its repository config restored afterwards."""
    import contextlib

    from cascade_client import CascadeClient

    @contextlib.contextmanager
    def change(task: str, **parameters):
        with CascadeClient(explicit_server.grpc_url) as admin:
            original = admin._client.get_model_config(task, as_json=True)["config"]
            config = json.loads(json.dumps(original))
            for name, value in parameters.items():
                if value is None:
                    config["parameters"].pop(name, None)
                else:
                    config["parameters"][name] = {"string_value": value}
            admin._client.load_model(task, config=json.dumps(config))
            try:
                yield explicit_server
            finally:
                # A load without a config would be a no-op (the files did not change): pass the original back.
                admin._client.load_model(task, config=json.dumps(original))

    return change


# --- pytest-xdist: one worker per module --------------------------------------------------------------
#: Modules that start Ray: one unit of work, so that no two Ray clusters of this session run at once.
RAY_MODULES = {"test_ray_server", "test_ray_engine"}
#: Modules of long tests with no module-scoped fixture (each test starts its own server): a unit per test, so that
#: one module's ten minutes of LLM labelling are shared out between the workers.
PER_TEST_MODULES = {"test_distill_server"}


def scope_of(nodeid: str) -> str:
    """The unit of work a test belongs to under ``--dist loadscope``: its module (whose fixtures, a server or a
    repository built for it, are then made once, on one worker), with the two exceptions above."""
    path = nodeid.split("::", 1)[0]
    module = path.rsplit("/", 1)[-1].removesuffix(".py")
    return "ray" if module in RAY_MODULES else nodeid if module in PER_TEST_MODULES else path


def pytest_xdist_make_scheduler(config, log):
    """``make test`` runs ``-n 2 --dist loadscope``: xdist's scope scheduler, with :func:`scope_of` as the scope."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return ModuleScheduling(config, log)


# --- no Ray process outlives the session ---------------------------------------------------------
#: Set in this session's environment: every process it starts inherits it, Ray's own too (raylet, workers, actors).
SESSION_MARK_ENV = "CASCADE_TEST_SESSION"
RAY_LEFT_GRACE_S = 60


def session_ray_processes(mark: str) -> dict[int, str]:
    """This session's live Ray processes: pid -> command line. Those of other work on the machine lack the mark."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            if not (cmd.startswith("ray::") or "/ray/" in cmd):
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                marked = f"{SESSION_MARK_ENV}={mark}".encode() in f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                exited = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            continue
        if marked and not exited:
            found[int(entry)] = cmd
    return found


@pytest.fixture(scope="session", autouse=True)
def no_ray_process_left():
    """Fails the session when a Ray process it started (a worker, an actor, a raylet) is still running a while after
    the last test, then ends those processes. Only processes carrying this session's fresh mark count: none exists at
    its start, and none of other work on the machine."""
    import contextlib
    import signal
    import time
    import uuid

    mark = uuid.uuid4().hex
    os.environ[SESSION_MARK_ENV] = mark
    yield
    deadline = time.monotonic() + RAY_LEFT_GRACE_S  # Ray's shutdown ends its processes within seconds
    while (left := session_ray_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"Ray processes left running {RAY_LEFT_GRACE_S} s after the session (now killed): " + "; ".join(
        f"{pid} {cmd[:120]}" for pid, cmd in sorted(left.items())
    )
