"""gRPC clients of the cascade: ``from cascade_client import CascadeClient``. Depends on tritonclient and NumPy only.

The clients are imported on first use (PEP 562), so the server's modules that import the wire contract
(``cascade_client.contract``) and the errors do not import tritonclient.
"""

from cascade_client.errors import (
    CascadeError,
    Forbidden,
    InvalidInput,
    RowsUnanswered,
    ServerError,
    ServerUnavailable,
    UnknownTask,
)

_CLIENTS = ("AsyncCascadeClient", "BatchResult", "CascadeClient", "ModelStats", "Prediction", "TaskInfo")

__all__ = [
    *_CLIENTS,
    "CascadeError",
    "Forbidden",
    "InvalidInput",
    "RowsUnanswered",
    "ServerError",
    "ServerUnavailable",
    "UnknownTask",
]


def __getattr__(name: str):
    if name in _CLIENTS:
        from cascade_client import grpc_client

        return getattr(grpc_client, name)
    raise AttributeError(f"module 'cascade_client' has no attribute {name!r}")
