"""gRPC clients of the cascade (``from cascade_client import CascadeClient``)."""

from cascade_client.grpc_client import AsyncCascadeClient, BatchResult, CascadeClient, ModelStats, Prediction

__all__ = ["AsyncCascadeClient", "BatchResult", "CascadeClient", "ModelStats", "Prediction"]
