"""The table jobs on Ray, against many Triton servers (``cascade filter|embed --engine ray``), and
:func:`classify_dataset` for a Ray Dataset. Ray is an optional extra (``pip install 'triton-cascade[ray]'``): no module
of this package imports it before a function that needs it runs, so ``import cascade.distributed`` works without it."""

from __future__ import annotations

import importlib.util

from cascade.distributed.api import classify_dataset
from cascade.errors import ConfigError

__all__ = ["classify_dataset", "require_ray"]


def require_ray() -> None:
    """A clear error when Ray is not installed (before any work begins)."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("--engine ray needs Ray: pip install 'triton-cascade[ray]' (or `make setup`)")
