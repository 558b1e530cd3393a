"""One small typed error hierarchy; each kind's ``status`` is its Triton status, mapped to a ``TritonError`` in one
place (:func:`triton_error`). The kinds a client sees live in the client package (``cascade_client.errors``) and are
re-exported here; the server's own kinds (a bad config, a failed or busy tier) are defined here."""

from __future__ import annotations

from cascade_client.errors import (
    CascadeError,
    Forbidden,
    InvalidInput,
    RowsUnanswered,
    ServerError,
    ServerUnavailable,
    UnknownTask,
)

__all__ = [
    "CascadeError",
    "ConfigError",
    "Forbidden",
    "InvalidInput",
    "RowsUnanswered",
    "ServerError",
    "ServerUnavailable",
    "TierBusy",
    "TierFailure",
    "UnknownTask",
    "check_numpy",
    "triton_error",
]


class ConfigError(CascadeError):
    """A model or task configuration is invalid: the model fails to load, nothing defaults silently."""

    status = "INVALID_ARG"


class TierFailure(CascadeError):
    """A tier model failed or timed out; the gate escalates its rows past it."""

    status = "UNAVAILABLE"


class TierBusy(TierFailure):
    """A tier did not take a call within the queue allowance: it is busy, not dead. Its rows go on like a failed
    tier's, but the circuit breaker stays closed."""


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


#: Set to 1 to serve under NumPy 2 anyway, with a Triton whose Python-backend stub supports it (newer than 2.51).
ALLOW_NUMPY2_ENV = "CASCADE_ALLOW_NUMPY2"


def check_numpy(version: str | None = None, environ: dict[str, str] | None = None) -> None:
    """Refuse NumPy 2 in a Python model, with the fix named: Triton 2.51's stub reads NumPy 2's dtypes wrongly, so
    every tensor a model makes gets a wrong byte size and requests fail with "output tensor shape does not match
    size of output" (bench/results/gpu-dry-run-numpy2-20261129-215425.json). The project pins numpy 1.26."""
    import os

    if version is None:
        import numpy

        version = numpy.__version__
    if int(version.split(".")[0]) >= 2 and (os.environ if environ is None else environ).get(ALLOW_NUMPY2_ENV) != "1":
        raise ConfigError(
            f"numpy {version} in the models' Python: Triton 2.51's Python backend miscomputes tensor sizes under "
            f"NumPy 2; install numpy==1.26.4 (the project's pin), or set {ALLOW_NUMPY2_ENV}=1 with a newer Triton"
        )
