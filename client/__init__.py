"""gRPC clients of the cascade (``from cascade.client import CascadeClient``)."""

from cascade.client.grpc_client import AsyncCascadeClient, CascadeClient, Prediction

__all__ = ["AsyncCascadeClient", "CascadeClient", "Prediction"]
