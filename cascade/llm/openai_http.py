"""An OpenAI-compatible endpoint as the LLM tiers see it: where it is (:class:`Endpoint`, written
``openai:MODEL@URL``) and an HTTP client that behaves like one (:class:`OpenAIClient`): pooled connections, a
concurrency limit, per-call timeouts, retries with backoff on 429 and 5xx honouring ``Retry-After`` (``tenacity``),
TLS verification on, and the tokens the endpoint says it used, counted.

The API key comes from an environment variable named in the endpoint (default ``OPENAI_API_KEY``); it is sent as a
bearer token and appears in no message, log line or config file. No Triton import here.
"""

from __future__ import annotations

import email.utils
import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from cascade.errors import ConfigError, TierFailure

SCHEME = "openai:"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
#: The mode of scoring: found by a probe at load (``auto``), or forced.
MODES = ("auto", "completions", "chat")
#: HTTP statuses worth another try: rate limited, or the endpoint's own trouble.
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0


@dataclass(frozen=True)
class Endpoint:
    """Where an LLM tier's model is served, and how hard to press it. ``url`` is the API base (``.../v1``)."""

    model: str
    url: str
    key_env: str = DEFAULT_KEY_ENV
    concurrency: int = 4  # requests in flight at most, per scorer
    timeout_s: float = 60.0  # per HTTP call
    retries: int = 4  # further tries after a 429, a 5xx or a timeout
    verify_tls: bool = True
    mode: str = "auto"

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ConfigError("the endpoint names no model: write openai:MODEL@URL")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"endpoint URL {self.url!r} is not http(s)://host[:port][/path]")
        if parts.username or parts.password:
            raise ConfigError("put no credentials in the endpoint URL: the key comes from an environment variable")
        if self.mode not in MODES:
            raise ConfigError(f"endpoint mode must be one of {MODES}, not {self.mode!r}")
        if self.concurrency < 1 or self.timeout_s <= 0 or self.retries < 0:
            raise ConfigError("endpoint concurrency ≥ 1, timeout > 0 and retries ≥ 0, please")
        if not self.key_env.replace("_", "").isalnum():
            raise ConfigError(f"key_env {self.key_env!r} is not an environment variable name")

    @classmethod
    def parse(cls, spec: str, **options) -> Endpoint:
        """``openai:MODEL@URL``; a URL with no path gets ``/v1`` (the OpenAI API's base)."""
        if not spec.startswith(SCHEME) or "@" not in spec:
            raise ConfigError(
                f"{spec!r}: an endpoint is written openai:MODEL@URL, e.g. openai:llama-3.1-70b@http://vllm:8000"
            )
        model, _, url = spec[len(SCHEME) :].partition("@")
        return cls(model=model, url=normalise_url(url), **options)

    @property
    def spec(self) -> str:
        return f"{SCHEME}{self.model}@{self.url}"

    def with_url(self, url: str | None) -> Endpoint:
        return self if not url else replace(self, url=normalise_url(url))

    def api_key(self, environ=None) -> str | None:
        return (os.environ if environ is None else environ).get(self.key_env) or None


def is_endpoint(spec: str | None) -> bool:
    return bool(spec) and spec.startswith(SCHEME)


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    return url + "/v1" if parts.scheme and parts.netloc and not parts.path else url


@dataclass
class Usage:
    """What an endpoint said it used, and how the calls went; thread-safe counters."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + int(value))

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                k: getattr(self, k) for k in ("requests", "prompt_tokens", "completion_tokens", "retries", "failures")
            }


class EndpointError(TierFailure):
    """An endpoint call failed after its retries; the message names the endpoint and the cause."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = status


class _Retry(Exception):
    def __init__(self, message: str, wait_s: float | None, status: int | None = None) -> None:
        super().__init__(message)
        self.wait_s, self.status = wait_s, status


class OpenAIClient:
    """A pooled, retrying JSON client of one endpoint (thread-safe: one ``httpx.Client`` under it)."""

    def __init__(self, endpoint: Endpoint, api_key: str | None = None, backoff_s: float = 0.5) -> None:
        import httpx

        self.endpoint = endpoint
        self.usage = Usage()
        self.backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=endpoint.url,
            headers=headers,
            verify=endpoint.verify_tls,
            timeout=httpx.Timeout(endpoint.timeout_s, connect=min(10.0, endpoint.timeout_s)),
            limits=httpx.Limits(max_connections=endpoint.concurrency, max_keepalive_connections=endpoint.concurrency),
        )

    def close(self) -> None:
        self._http.close()

    def get(self, path: str) -> dict:
        return self._call("GET", path, None)

    def post(self, path: str, body: dict) -> dict:
        return self._call("POST", path, body | {"model": self.endpoint.model})

    def _call(self, method: str, path: str, body: dict | None) -> dict:
        from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt

        def wait(state) -> float:
            hint = state.outcome.exception().wait_s
            backoff = self.backoff_s * 2 ** (state.attempt_number - 1)
            return min(MAX_RETRY_AFTER_S, hint if hint is not None else backoff)

        def count_retry(state) -> None:
            self.usage.add(retries=1)

        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(_Retry),
                stop=stop_after_attempt(self.endpoint.retries + 1),
                wait=wait,
                before_sleep=count_retry,
                reraise=False,
            ):
                with attempt:
                    return self._once(method, path, body)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            self.usage.add(failures=1)
            tries = self.endpoint.retries + 1
            raise EndpointError(f"{self._where(path)}: {last} ({tries} tries)", last.status) from None
        except EndpointError:
            self.usage.add(failures=1)
            raise
        raise AssertionError("unreachable")

    def _once(self, method: str, path: str, body: dict | None) -> dict:
        import httpx

        self.usage.add(requests=1)
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TimeoutException:
            raise _Retry(f"no answer within {self.endpoint.timeout_s:g} s", None) from None
        except httpx.TransportError as exc:
            raise _Retry(f"cannot connect ({type(exc).__name__}: {exc})", None) from None
        status = response.status_code
        if status in RETRY_STATUSES:
            raise _Retry(f"HTTP {status} {_detail(response)}", retry_after(response.headers.get("retry-after")), status)
        if status in (401, 403):
            raise EndpointError(
                f"{self._where(path)} refused the API key (HTTP {status}): set ${self.endpoint.key_env} to a key "
                "this endpoint accepts",
                status,
            )
        if status >= 400:
            raise EndpointError(f"{self._where(path)}: HTTP {status} {_detail(response)}", status)
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise EndpointError(f"{self._where(path)} answered with something that is not JSON", status) from None
        if not isinstance(data, dict):
            raise EndpointError(f"{self._where(path)} answered JSON that is not an object", status)
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.usage.add(
                prompt_tokens=_int(usage.get("prompt_tokens")), completion_tokens=_int(usage.get("completion_tokens"))
            )
        return data

    def _where(self, path: str) -> str:
        return f"endpoint {self.endpoint.url}{path} (model {self.endpoint.model})"


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _detail(response) -> str:
    text = response.text[:200].replace("\n", " ")
    return f"({text})" if text else ""


def _int(value) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0
