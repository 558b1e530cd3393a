"""cascade.server.launcher against a real tritonserver (``-m server``): models served, load errors surfaced, explicit
mode,
signals."""

from __future__ import annotations

import os
import re
import signal
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from cascade.errors import ServerError
from cascade.server.launcher import ServerOptions, TritonServer, free_ports, serve

# --- integration: a real tritonserver ------------------------------------------------------------
DOUBLE_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils

import cascade.contract  # the stub runs this virtual environment's python: the project imports


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if x.size and x.flat[0] < 0:
                error = pb_utils.TritonError("negative input", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", (x * 2).astype(np.float32))]))
        return responses
"""

FAILING_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("boom: the weights file is missing")

    def execute(self, requests):
        return []
"""


def write_model(repo: Path, name: str, source: str) -> Path:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(textwrap.dedent(source))
    (repo / name / "config.pbtxt").write_text(
        textwrap.dedent(
            f"""\
            name: "{name}"
            backend: "python"
            max_batch_size: 8
            input [ {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }} ]
            output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }} ]
            instance_group [ {{ kind: KIND_CPU count: 1 }} ]
            """
        )
    )
    return repo


def server_opts(repo: Path, tmp_path: Path, **kw) -> ServerOptions:
    http, grpc, metrics = free_ports(3)
    return ServerOptions(
        repository=repo,
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        log_file=tmp_path / "server.log",
        **kw,
    )


def infer_double(url: str, values) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("X", [1, len(values)], "FP32")
        tensor.set_data_from_numpy(np.asarray([values], dtype=np.float32))
        return client.infer("double", [tensor]).as_numpy("Y")


@pytest.mark.server
def test_server_serves_a_python_model(tmp_path):
    import tritonclient.grpc as grpcclient

    repo = write_model(tmp_path / "repo", "double", DOUBLE_MODEL)
    with TritonServer(server_opts(repo, tmp_path)) as server:
        assert server.is_ready()
        np.testing.assert_array_equal(infer_double(server.grpc_url, [1.5, -2.0, 3.0]), [[3.0, -4.0, 6.0]])
        # A per-request error from a Python model reaches the client with its status.
        with pytest.raises(grpcclient.InferenceServerException) as info:
            infer_double(server.grpc_url, [-1.0])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "negative input" in info.value.message()
    assert server.returncode == 0  # SIGTERM is a clean shutdown
    assert not server.is_running()


@pytest.mark.server
def test_model_that_fails_to_load_surfaces_its_error(tmp_path):
    repo = write_model(tmp_path / "repo", "broken", FAILING_MODEL)
    server = TritonServer(server_opts(repo, tmp_path))
    with pytest.raises(ServerError) as info:
        server.start()
    message = str(info.value)
    assert "boom: the weights file is missing" in message
    assert "broken" in message
    assert not server.is_running()
    assert server.returncode != 0


@pytest.mark.server
def test_explicit_mode_loads_models_on_request(tmp_path):
    import tritonclient.grpc as grpcclient

    repo = write_model(tmp_path / "repo", "double", DOUBLE_MODEL)
    opts = server_opts(repo, tmp_path, model_control_mode="explicit", load_models=[])
    with TritonServer(opts) as server, grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert client.is_server_ready()
        assert not client.is_model_ready("double")
        client.load_model("double")
        assert client.is_model_ready("double")
        np.testing.assert_array_equal(infer_double(server.grpc_url, [2.0]), [[4.0]])


@pytest.mark.server
def test_serve_returns_nonzero_when_a_model_fails(tmp_path, capsys):
    repo = write_model(tmp_path / "repo", "broken", FAILING_MODEL)
    code = serve(server_opts(repo, tmp_path), follow_log=False)
    assert code != 0
    assert "boom: the weights file is missing" in capsys.readouterr().err


class _Announcements:
    """A text sink for serve(): records what it prints, signals once the endpoints are printed."""

    def __init__(self, marker: str) -> None:
        self.marker, self.text, self.seen = marker, "", threading.Event()

    def write(self, text: str) -> int:
        self.text += text
        if self.marker in self.text:
            self.seen.set()
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.server
def test_serve_forwards_sigterm_for_a_clean_shutdown(tmp_path):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    repo = write_model(tmp_path / "repo", "double", DOUBLE_MODEL)
    opts = server_opts(repo, tmp_path)
    out = _Announcements(opts.grpc_url)
    outcome = {}

    served = threading.Event()

    def infer_then_terminate():
        if not out.seen.wait(timeout=300):
            return  # serve() fails on its own
        try:
            outcome["y"] = infer_double(opts.grpc_url, [5.0])
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
        if not served.wait(timeout=120):  # the signal was lost: fail rather than hang
            outcome["lost"] = True
            os.kill(int(re.search(r"\(pid (\d+)", out.text).group(1)), signal.SIGKILL)

    worker = threading.Thread(target=infer_then_terminate, daemon=True)
    worker.start()
    code = serve(opts, follow_log=False, out=out)
    served.set()
    worker.join(timeout=30)
    assert "lost" not in outcome, "serve() did not act on SIGTERM"
    assert code == 0
    np.testing.assert_array_equal(outcome["y"], [[10.0]])
