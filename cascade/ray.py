"""The Python API for Ray users: ``cascade.ray.classify_dataset(ds, task, urls, ...)`` adds
the filter job's result columns to a ``ray.data.Dataset``. It lives in :mod:`cascade.tables.ray_api`; importing this
module does not import Ray (the call does)."""

from cascade.tables.ray_api import classify_dataset

__all__ = ["classify_dataset"]
