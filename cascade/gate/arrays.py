"""Arrays wherever they live: the gate's math runs in the namespace of its inputs, through the array API.

In the CPU profile the gate's arrays are NumPy arrays; in the GPU profile they are torch tensors on the GPU
(taken from Triton's tensors by DLPack, no copy). The same code serves both: it asks an array for its
namespace (``array-api-compat``) and creates new arrays on the same device. Only the small final outputs
(and the per-row confidences the metrics count) are copied to the host. torch is imported only when an
array is a torch tensor or a torch device is asked for.
"""

from __future__ import annotations

import contextlib
from typing import Any

import array_api_compat as compat
import numpy as np

Array = Any  # a NumPy array or a torch tensor

#: What ``Placement`` names a device by: None is the host (NumPy); "cuda", "cuda:1", "cpu" are torch devices.
Device = str | None


class Placement:
    """Where a batch's arrays live: a namespace and a device. ``Placement(None)`` is NumPy on the host."""

    def __init__(self, device: Device = None) -> None:
        self.device = device
        if device is None:
            self.xp, self._device = compat.array_namespace(np.zeros(0)), "cpu"
        else:
            import torch

            self.xp, self._device = compat.array_namespace(torch.zeros(0)), torch.device(device)

    @classmethod
    def of(cls, array: Array) -> Placement:
        if compat.is_torch_array(array):
            return cls(str(array.device))
        return cls(None)

    def zeros(self, shape, dtype: str = "float32") -> Array:
        return self.xp.zeros(shape, dtype=getattr(self.xp, dtype), device=self._device)

    def full(self, shape, value, dtype: str = "int64") -> Array:
        return self.xp.full(shape, value, dtype=getattr(self.xp, dtype), device=self._device)

    def asarray(self, value, dtype: str = "float32") -> Array:
        """``value`` (from any namespace or the host) as an array of this placement."""
        if self.device is not None and isinstance(value, np.ndarray):
            import torch

            return torch.from_numpy(np.ascontiguousarray(value, dtype=dtype)).to(self._device)
        if self.device is None and compat.is_torch_array(value):
            return host(value).astype(dtype, copy=False)
        return self.xp.asarray(value, dtype=getattr(self.xp, dtype), device=self._device)

    def __repr__(self) -> str:
        return f"Placement({self.device!r})"


def host(array: Array) -> np.ndarray:
    """A NumPy copy on the host (no copy for a NumPy array)."""
    if compat.is_torch_array(array):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def size(array: Array) -> int:
    return int(array.shape[0]) if array.ndim else 1


def nonzero(mask: Array) -> Array:
    """Indices of the true entries of a 1-D mask, in the mask's namespace and device."""
    return compat.array_namespace(mask).nonzero(mask)[0]


def all_true(mask: Array) -> bool:
    return bool(compat.array_namespace(mask).all(mask))


def all_finite(rows: Array) -> bool:
    """Whether a [n, d] array holds no NaN or Inf, in one pass with no temporary of its size: a row sum is
    finite whenever its values are (an overflowing sum of huge values falls back to the exact test)."""
    xp = compat.array_namespace(rows)
    quiet = np.errstate(over="ignore", invalid="ignore") if isinstance(rows, np.ndarray) else contextlib.nullcontext()
    with quiet:
        if bool(xp.all(xp.isfinite(xp.sum(rows, axis=1)))):
            return True
    return bool(xp.all(xp.isfinite(rows)))


def first_bad_row(rows: Array) -> int:
    """The first row of a [n, d] array that holds NaN or Inf."""
    xp = compat.array_namespace(rows)
    return int(host(nonzero(~xp.all(xp.isfinite(rows), axis=1)))[0])
