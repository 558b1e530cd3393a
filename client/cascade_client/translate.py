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
