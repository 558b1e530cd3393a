"""gRPC clients of the cascade (``from cascade.client import CascadeClient``)."""

from cascade.client.grpc_client import AsyncCascadeClient, BatchResult, CascadeClient, ModelStats, Prediction

__all__ = ["AsyncCascadeClient", "BatchResult", "CascadeClient", "ModelStats", "Prediction"]
