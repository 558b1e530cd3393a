"""The table jobs (``cascade filter``, ``embed``, ``make-table``): reading and checking a table, sending its chunks
through a task's gate, committing them so that a rerun resumes, and the summary; the local engine (``local.py``) and
the Ray engine (``ray_engine.py``, ``ray_worker.py``, ``ray_api.py``) share the per-chunk work. Ray is an optional
extra: no module here imports it before a function that needs it runs."""
