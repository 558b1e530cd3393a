"""The errors a client of the server sees, one small typed hierarchy; each kind's ``status`` is the Triton status
it stands for. ``cascade.errors`` adds the server's own kinds below :class:`CascadeError`."""

from __future__ import annotations


class CascadeError(Exception):
    """Base class of every error the project raises on purpose."""

    status = "INTERNAL"


class InvalidInput(CascadeError):
    """A request (or a CLI argument) is malformed: answered with INVALID_ARG for that request."""

    status = "INVALID_ARG"


class UnknownTask(CascadeError):
    """A task (public model) that the server does not serve."""

    status = "NOT_FOUND"


class Forbidden(CascadeError):
    """An admin call without the server's admin key (a restricted protocol)."""

    status = "UNAVAILABLE"  # what Triton answers for a restricted protocol


class ServerError(CascadeError):
    """The Triton server could not be found, started or reached."""

    status = "UNAVAILABLE"


class ServerUnavailable(ServerError):
    """The server did not answer (connection refused or lost, deadline passed): worth retrying later."""


class RowsUnanswered(ServerUnavailable):
    """The gate answered no tier's answer for some rows (their tiers failed and nothing scored them, or the request
    asked ``on_tier_failure=error``): worth retrying later, like an unavailable server."""
