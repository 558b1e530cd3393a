"""A real OpenAI-compatible endpoint for the remote LLM tier's tests, over real sockets (no mock of the HTTP API).

``llama_server(gguf)`` (:mod:`cascade.llm.local_endpoint`) runs llama.cpp's own server on a free port; ``FaultProxy``
stands in front of any upstream, counts what passes (requests, statuses, summed ``usage``) and injects the faults a
test programs between calls: error statuses (429 with Retry-After, 500...), a delay, bodies that are not JSON.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cascade.llm.local_endpoint import free_port, llama_server  # noqa: F401 (the tests import them from here)

# No proxy from the environment: every request here goes to 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Hop-by-hop headers and those the forwarded body makes wrong (the proxy sends an identity body of its own length).
_NOT_FORWARDED = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "accept-encoding"}


class FaultProxy:
    """A forwarding HTTP proxy (GET, POST) to ``upstream_url`` on 127.0.0.1 and a free port, in a daemon thread.

    Counters (under a lock): ``requests``; ``statuses``, one per answered request; ``usage``, the summed
    ``usage`` token counts of the 200 JSON bodies that clients received; ``log_lines``, ``"METHOD PATH STATUS"``
    per request (never a header value). Faults, set between calls: ``fail(n, status, retry_after)``,
    ``delay(seconds)`` (applies to every request, faulted ones included), ``malformed(n)``, ``reset()``.
    """

    def __init__(self, upstream_url: str, *, upstream_timeout: float = 300.0):
        self.upstream = upstream_url.rstrip("/")
        self.upstream_timeout = upstream_timeout
        self.lock = threading.Lock()
        self.requests = 0
        self.statuses: list[int] = []
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        self.log_lines: list[str] = []
        self.reset()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # a client that hung up is not an error here
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fault-proxy", daemon=True
        )

    # Faults
    def fail(self, n: int, status: int = 429, retry_after: float | None = None) -> None:
        with self.lock:
            self._fail = (n, status, retry_after)

    def delay(self, seconds: float) -> None:
        with self.lock:
            self._delay = seconds

    def malformed(self, n: int) -> None:
        with self.lock:
            self._malformed = n

    def reset(self) -> None:
        with self.lock:
            self._fail: tuple[int, int, float | None] = (0, 429, None)
            self._delay = 0.0
            self._malformed = 0

    # Lifetime
    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # The handler's side
    def _plan(self) -> tuple[float, tuple[int, float | None] | None, bool]:
        """The faults of the request that just arrived: (delay, (status, retry_after) or None, malformed)."""
        with self.lock:
            self.requests += 1
            n, status, retry_after = self._fail
            if n > 0:
                self._fail = (n - 1, status, retry_after)
                return self._delay, (status, retry_after), False
            if self._malformed > 0:
                self._malformed -= 1
                return self._delay, None, True
            return self._delay, None, False

    def _record(self, method: str, path: str, status: int, body: bytes | None) -> None:
        usage = None
        if status == 200 and body is not None:
            with contextlib.suppress(ValueError, AttributeError):
                usage = json.loads(body).get("usage")
        usage = usage if isinstance(usage, dict) else {}
        with self.lock:
            self.statuses.append(status)
            self.log_lines.append(f"{method} {path} {status}")
            for key in self.usage:
                self.usage[key] += int(usage.get(key) or 0)

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes | None) -> tuple[int, bytes, str]:
        request = urllib.request.Request(self.upstream + path, data=body, headers=headers, method=method)
        try:
            with _OPENER.open(request, timeout=self.upstream_timeout) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "application/json")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get("Content-Type", "application/json")
        except (urllib.error.URLError, OSError) as exc:
            return 502, _error_body(f"upstream unreachable: {exc}", "bad_gateway", 502), "application/json"


def _error_body(message: str, kind: str, status: int) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a pooled client (httpx) expects; every answer has a length

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
            pass  # the proxy keeps its own log lines, without headers

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            delay, failure, malformed = proxy._plan()
            if delay > 0:
                time.sleep(delay)
            extra = {}
            if failure is not None:
                status, retry_after = failure
                kind = "rate_limit_error" if status == 429 else "server_error"
                payload, content_type = _error_body("injected fault", kind, status), "application/json"
                if retry_after is not None:
                    extra["Retry-After"] = f"{retry_after:g}"
            else:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED}
                status, payload, content_type = proxy._forward(self.command, self.path, headers, body)
                if malformed:
                    status, payload, content_type = 200, b'{"choices": [{"text": "trunc', "application/json"
            proxy._record(self.command, self.path, status, None if malformed else payload)
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (its timeout during a delay)

    return Handler
