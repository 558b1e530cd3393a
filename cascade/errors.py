"""One small typed error hierarchy; ``STATUS`` maps each kind to a Triton status in one place."""

from __future__ import annotations


class CascadeError(Exception):
    """Base class of every error the project raises on purpose."""

    status = "INTERNAL"


class InvalidInput(CascadeError):
    """A request (or a CLI argument) is malformed: answered with INVALID_ARG for that request."""

    status = "INVALID_ARG"


class ConfigError(CascadeError):
    """A model or task configuration is invalid: the model fails to load, nothing defaults silently."""

    status = "INVALID_ARG"


class UnknownTask(CascadeError):
    """A task (public model) that the server does not serve."""

    status = "NOT_FOUND"


class Forbidden(CascadeError):
    """An admin call without the server's admin key (a restricted protocol)."""

    status = "UNAVAILABLE"  # what Triton answers for a restricted protocol


class TierFailure(CascadeError):
    """A tier model failed or timed out; the gate escalates its rows past it."""

    status = "UNAVAILABLE"


class TierBusy(TierFailure):
    """A tier did not take a call within the queue allowance: it is busy, not dead. Its rows go on like a failed
    tier's, but the circuit breaker stays closed."""


class ServerError(CascadeError):
    """The Triton server could not be found, started or reached."""

    status = "UNAVAILABLE"


class ServerUnavailable(ServerError):
    """The server did not answer (connection refused or lost, deadline passed): worth retrying later."""


class RowsUnanswered(ServerUnavailable):
    """The gate answered no tier's answer for some rows (their tiers failed and nothing scored them, or the request
    asked ``on_tier_failure=error``): worth retrying later, like an unavailable server."""


def triton_error(pb_utils, exc: Exception, default_message: str | None = None):
    """The ``pb_utils.TritonError`` for ``exc`` (the Python backend passes its utils module in).

    The project's errors keep their message and map to their ``status``; anything else becomes
    INTERNAL with a one-line message, never a traceback.
    """
    status = exc.status if isinstance(exc, CascadeError) else "INTERNAL"
    if isinstance(exc, CascadeError):
        message = str(exc)
    else:
        message = f"{default_message or type(exc).__name__}: {exc}"
    code = getattr(pb_utils.TritonError, status, pb_utils.TritonError.INTERNAL)
    return pb_utils.TritonError(message, code)
