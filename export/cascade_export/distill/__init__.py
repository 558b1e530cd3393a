"""Distillation: the teacher labels a sample of a table (``cascade label``, ``task create``), cached so that a
rerun resumes; uniform or active sampling."""
