"""Writing the Triton model repository atomically: models are built in a staging folder beside the
repository and renamed into place, so the server never sees a half-written model. The commit is journaled
(``cascade.repository.journal``): a writer killed at any point leaves the previous version of the whole task, or
the whole new one, after :func:`recover` (run before every write and when a server starts).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from cascade import contract
from cascade.paths import BACKENDS_DIR
from cascade.repository.configgen import (
    BACKEND_GATE,
    BACKEND_LLM_GENERATE,
    BACKEND_LLM_REMOTE,
    BACKEND_LLM_SCORER,
    BACKEND_LLM_TRTLLM,
    BACKEND_ONNX_RUNNER,
    ModelSpec,
    parse_config,
    write_config,
)
from cascade.repository.journal import DONE, JOURNAL, OLD_PREFIX, OWNER, fsync_dir, recover
from cascade.runtime.onnx_runner import TOKEN_INPUTS

BACKEND_TOKENIZER = "tokenizer"
#: The XGBoost booster's own file beside its ONNX graph (the GPU profile's FIL backend reads it).
XGBOOST_JSON = "xgboost.json"
VERSION = contract.MODEL_VERSION


class RepositoryWriter:
    """``with RepositoryWriter(repo) as w: d = w.add(spec); ...`` — committed on success only."""

    def __init__(self, repo: Path, profile: str = "cpu") -> None:
        self.repo = Path(repo)
        self.profile = profile
        self.repo.mkdir(parents=True, exist_ok=True)
        self.recovered = recover(self.repo)
        self.staging = Path(tempfile.mkdtemp(dir=self.repo.parent, prefix=f".{self.repo.name}.staging-"))
        (self.staging / OWNER).write_text(str(os.getpid()))
        self.names: list[str] = []

    def add(self, spec: ModelSpec) -> Path:
        """Stage a model: its config.pbtxt and Python-backend source; returns the version folder."""
        model_dir = self.staging / spec.name
        version = model_dir / VERSION
        version.mkdir(parents=True)
        write_config(spec, model_dir, self.profile)
        if spec.backend == "python":  # other backends (tensorrtllm) bring their own code: 1/ stays empty
            shutil.copy2(BACKENDS_DIR / spec.source / "model.py", version / "model.py")
        self.names.append(spec.name)
        return version

    def add_dir(self, name: str, source: Path) -> Path:
        """Stage a model folder prepared elsewhere (``cascade export`` of a trained task), copied whole."""
        if not (Path(source) / "config.pbtxt").is_file():
            raise FileNotFoundError(f"{source} is not a model folder (no config.pbtxt)")
        shutil.copytree(source, self.staging / name)
        self.names.append(name)
        return self.staging / name / VERSION

    def commit(self) -> list[str]:
        """Move every staged model into place, all or none (journaled: see the module docstring)."""
        journal = self.staging / JOURNAL
        with open(journal, "w") as f:
            json.dump({"names": self.names}, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.staging)
        for name in self.names:
            dest = self.repo / name
            if dest.exists():
                os.rename(dest, self.staging / f"{OLD_PREFIX}{name}")
            os.rename(self.staging / name, dest)
        fsync_dir(self.repo)
        os.rename(journal, self.staging / DONE)  # the commit point
        self.abort()
        return self.names

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> RepositoryWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def python_source(model_dir: Path) -> str | None:
    """Which ``python_backends/<source>`` a built model runs (None: not a Python-backend model)."""
    config = parse_config((Path(model_dir) / "config.pbtxt").read_text())
    if config.backend != "python":
        return None
    params = set(config.parameters)
    if config.model_transaction_policy.decoupled:  # the one decoupled Python model, on either runtime
        return BACKEND_LLM_GENERATE
    if contract.CFG_TRTLLM_MODEL in params:
        return BACKEND_LLM_TRTLLM  # the GPU profile's llm_large
    if contract.CFG_LLM_ENDPOINT in params:
        return BACKEND_LLM_REMOTE
    if contract.CFG_LLM_MODEL in params:
        return BACKEND_LLM_SCORER
    if contract.CFG_TASK in params:
        return BACKEND_GATE
    if config.output and {o.name for o in config.output} <= set(TOKEN_INPUTS):
        return BACKEND_TOKENIZER  # the GPU profile's tokenize step
    return BACKEND_ONNX_RUNNER


#: How every ``python_backends/*/model.py`` begins, in every version: only copies that begin so are the project's
#: glue and are refreshed; a Python model of the user's own in the same repository is left alone.
GLUE_MARKER = '"""Triton glue for'


def refresh_backends(repo: Path) -> list[str]:
    """Copy this version's ``model.py`` glue into every Python model of a built repository whose copy differs:
    the glue is code, not a trained artefact, and a copy from another version may import modules that moved
    (every server :class:`cascade.server.launcher.TritonServer` starts calls this; so do developers who edit
    ``python_backends/``). A copy that does not begin with :data:`GLUE_MARKER` is a model of the user's own and
    is left alone. Returns the models whose glue changed."""
    refreshed = []
    for model_dir in sorted(p for p in Path(repo).iterdir() if (p / "config.pbtxt").is_file()):
        source = python_source(model_dir)
        if source is None:
            continue
        glue, copy = BACKENDS_DIR / source / "model.py", model_dir / VERSION / "model.py"
        if not copy.is_file() or not copy.read_text(errors="replace").startswith(GLUE_MARKER):
            continue
        if copy.read_bytes() != glue.read_bytes():
            shutil.copy2(glue, copy)
            refreshed.append(model_dir.name)
    return refreshed
