"""tests/server/openai_endpoint.py's FaultProxy against a tiny real upstream (a ThreadingHTTPServer answering a
fixed completion with ``usage``): forwarding, usage sums, injected statuses with Retry-After, delay, bodies that are
not JSON. Real sockets on 127.0.0.1, no LLM."""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "server"))
openai_endpoint = importlib.import_module("openai_endpoint")
FaultProxy = openai_endpoint.FaultProxy

USAGE = {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}
KEY = "sk-test-secret"


class Upstream(BaseHTTPRequestHandler):
    """A fixed completion that echoes what it received; 404 on /missing."""

    protocol_version = "HTTP/1.1"
    hits = 0

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else None
        type(self).hits += 1
        if self.path == "/missing":
            status, doc = 404, {"error": {"message": "no such route"}}
        else:
            status = 200
            doc = {
                "object": "text_completion",
                "choices": [{"index": 0, "text": " positive", "finish_reason": "length"}],
                "usage": USAGE,
                "echo": {
                    "method": self.command,
                    "path": self.path,
                    "body": body,
                    "auth": self.headers["Authorization"],
                },
            }
        payload = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, format, *args) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(upstream):
    with FaultProxy(upstream) as p:
        yield p


@pytest.fixture
def http(proxy):
    with httpx.Client(base_url=proxy.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=5) as client:
        yield client


def test_forwards_method_path_body_and_headers(proxy, http):
    response = http.post("/v1/completions", json={"prompt": "Review: fine", "max_tokens": 1})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    echo = response.json()["echo"]
    assert echo["method"] == "POST" and echo["path"] == "/v1/completions" and echo["auth"] == f"Bearer {KEY}"
    assert json.loads(echo["body"]) == {"prompt": "Review: fine", "max_tokens": 1}
    models = http.get("/v1/models?x=1")
    assert models.status_code == 200 and models.json()["echo"]["method"] == "GET"
    assert models.json()["echo"]["path"] == "/v1/models?x=1" and models.json()["echo"]["body"] is None
    missing = http.get("/missing")
    assert missing.status_code == 404 and missing.json() == {"error": {"message": "no such route"}}
    assert proxy.requests == 3 and proxy.statuses == [200, 200, 404]
    assert proxy.log_lines == ["POST /v1/completions 200", "GET /v1/models?x=1 200", "GET /missing 404"]
    assert not any(KEY in line for line in proxy.log_lines)


def test_sums_usage_of_the_200_json_answers(proxy, http):
    for _ in range(3):
        assert http.post("/v1/completions", json={}).status_code == 200
    http.get("/missing")  # a 404: no usage
    assert proxy.usage == {k: 3 * v for k, v in USAGE.items()}


def test_injected_429_with_retry_after_never_reaches_upstream(proxy, http):
    hits = Upstream.hits
    proxy.fail(2, status=429, retry_after=1.5)
    for _ in range(2):
        response = http.post("/v1/completions", json={})
        assert response.status_code == 429 and response.headers["Retry-After"] == "1.5"
        assert response.json()["error"]["code"] == 429
    assert Upstream.hits == hits
    assert http.post("/v1/completions", json={}).status_code == 200 and Upstream.hits == hits + 1
    assert proxy.statuses == [429, 429, 200] and proxy.usage == USAGE
    proxy.fail(1, status=429)
    assert "Retry-After" not in http.get("/v1/models").headers


def test_injected_500_then_reset(proxy, http):
    proxy.fail(1, status=500)
    response = http.post("/v1/completions", json={})
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    assert "Retry-After" not in response.headers
    assert http.post("/v1/completions", json={}).status_code == 200
    proxy.fail(5, status=503)
    proxy.malformed(5)
    proxy.delay(1)
    proxy.reset()
    start = time.monotonic()
    assert http.post("/v1/completions", json={}).json()["usage"] == USAGE
    assert time.monotonic() - start < 0.5
    assert proxy.log_lines == ["POST /v1/completions 500", "POST /v1/completions 200", "POST /v1/completions 200"]


def test_delay_and_a_client_that_gives_up(proxy, http):
    proxy.delay(0.3)
    start = time.monotonic()
    assert http.post("/v1/completions", json={}).status_code == 200
    assert time.monotonic() - start >= 0.3
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/completions", json={}, timeout=0.1)
    proxy.delay(0)
    assert http.post("/v1/completions", json={}).status_code == 200  # the proxy survived the client hanging up


def test_malformed_bodies_reach_upstream_but_count_no_usage(proxy, http):
    hits = Upstream.hits
    proxy.malformed(1)
    response = http.post("/v1/completions", json={})
    assert response.status_code == 200 and Upstream.hits == hits + 1
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    assert proxy.usage == {k: 0 for k in USAGE}
    assert http.post("/v1/completions", json={}).json()["usage"] == USAGE and proxy.usage == USAGE


def test_upstream_down_is_a_502():
    with FaultProxy(f"http://127.0.0.1:{openai_endpoint.free_port()}") as proxy:
        response = httpx.get(f"{proxy.url}/v1/models", timeout=5)
    assert response.status_code == 502 and "upstream unreachable" in response.json()["error"]["message"]
