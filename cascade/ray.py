"""The Python API for Ray users (issue #19's name for it): ``cascade.ray.classify_dataset(ds, task, urls, ...)`` adds
the filter job's result columns to a ``ray.data.Dataset``. It lives in :mod:`cascade.distributed.api`; importing this
module does not import Ray (the call does)."""

from cascade.distributed.api import classify_dataset

__all__ = ["classify_dataset"]
