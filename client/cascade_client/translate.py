"""Triton client errors (``InferenceServerException``) translated into the project's error kinds
(:mod:`cascade.errors`), by message and gRPC status.
"""

from __future__ import annotations

import contextlib

from tritonclient.utils import InferenceServerException

from cascade_client import contract
from cascade_client.errors import (
    CascadeError,
    Forbidden,
    InvalidInput,
    RowsUnanswered,
    ServerError,
    ServerUnavailable,
    UnknownTask,
)


def translate(exc: InferenceServerException, task: str) -> CascadeError:
    """Map a Triton error to the project's error kinds."""
    message = exc.message() or str(exc)
    if "unknown model" in message or "is not found" in message:
        return UnknownTask(f"unknown task {task!r}: the server does not serve it ({message})")
    status = str(exc.status())
    if "protocol is restricted" in message:
        return Forbidden(f"{task}: {message} (set ${contract.ADMIN_KEY_ENV} to the server's admin key)")
    if "INVALID_ARG" in status:
        return InvalidInput(message)
    if status == "StatusCode.UNAVAILABLE" and "unanswered" in message:
        return RowsUnanswered(f"{task}: {message}")
    if status in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"):
        return ServerUnavailable(f"{task}: {message} (status {status})")
    return ServerError(f"{task}: {message} (status {exc.status()})")


@contextlib.contextmanager
def translated(what: str, error=translate):
    """Inside the block, a Triton error is raised as ``error(exc, what)`` (one of the project's errors)."""
    try:
        yield
    except InferenceServerException as exc:
        raise error(exc, what) from exc


def load_error(exc: InferenceServerException, name: str) -> ServerError:
    return ServerError(
        f"loading {name!r} failed: {exc.message()} (is the server in --model-control-mode=explicit, "
        "serving this repository?)"
    )


#: The model a load probe asks for: no repository holds it, so a server that takes loads answers that it is not
#: there, and loads nothing.
LOAD_PROBE_MODEL = "__cascade_load_probe__"


def load_probe(exc: InferenceServerException | None, url: str) -> None:
    """What a load of :data:`LOAD_PROBE_MODEL` said: nothing when the server takes model loads (it found no such
    model); else the reason, as one of the project's errors naming the fix."""
    if exc is None:
        return
    message = exc.message() or str(exc)
    if "polling is enabled" in message:
        raise ServerError(
            f"the server at {url} does not load models while it runs (--model-control-mode=none): restart it with "
            "`cascade serve` (which takes new models by default) or tritonserver --model-control-mode=explicit"
        )
    if "failed to poll from model repository" in message or "not found" in message:
        return
    raise translate(exc, f"loading models into {url}")
