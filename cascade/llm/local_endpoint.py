"""llama.cpp's own OpenAI-compatible server (``python -m llama_cpp.server``) on a local GGUF: a real endpoint for the
remote LLM tier where no other is at hand (its tests, ``make bench-remote``, a user trying ``--llm-large`` out).

``logits_all`` is on, which ``/v1/completions`` needs to return log-probs. No Triton import here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# No proxy from the environment: every request here goes to 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(no log: {exc})"


@contextlib.contextmanager
def llama_server(
    model_path: str | os.PathLike,
    *,
    n_ctx: int = 1024,
    n_threads: int = 1,
    api_key: str | None = None,
    log_path: str | os.PathLike | None = None,
    timeout: float = 180.0,
) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server on 127.0.0.1 and a free port; yields its base URL once ``GET /v1/models``
    answers 200. ``logits_all`` is on, so that /v1/completions can return logprobs. Its stdout and stderr go to
    ``log_path`` (a temporary file when None, removed afterwards)."""
    port = free_port()
    temporary = log_path is None
    if temporary:
        fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
        os.close(fd)
        log_path = name
    log_path = Path(log_path)
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1",
        "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(n_threads),
        "--n_threads_batch", str(n_threads), "--logits_all", "true",
    ]  # fmt: skip
    if api_key is not None:
        command += ["--api_key", api_key]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        _wait_ready(process, url, api_key, log_path, timeout)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if temporary:
            log_path.unlink(missing_ok=True)


def _wait_ready(process: subprocess.Popen, url: str, api_key: str | None, log_path: Path, timeout: float) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {process.returncode}; log tail:\n{_tail(log_path)}")
        try:
            with _OPENER.open(urllib.request.Request(f"{url}/v1/models", headers=headers), timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"llama_cpp.server not ready at {url} after {timeout:.0f} s; log tail:\n{_tail(log_path)}")
