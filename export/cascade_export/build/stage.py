"""What the build steps (train, calibrate, export) share: their options (:class:`BuildOptions`), their log
line, and the stage folder that ``cascade train`` writes and ``cascade calibrate`` and ``cascade export`` read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cascade import embedders
from cascade.errors import ConfigError
from cascade.tasks import TaskSpec

STATE_FILE = "state.json"
CALIB_FILE = "calib.npz"
MODELS_DIR = "models"


@dataclass(frozen=True)
class BuildOptions:
    train_rows: int = 2000
    calib_rows: int = 1000
    encoder_epochs: int = 2
    seed: int = 0
    data_dir: str | None = None
    min_coverage: float = 0.02
    #: Keep tiers that miss the calibration target, with threshold 1.0 (they escalate all but certain
    #: rows). For tests and debugging: the default disables them, the quality gate of the paper.
    keep_all_tiers: bool = False
    progress: bool = True
    #: The repository's embedder for a new repository (cascade.embedders); None: the repository's, or the default.
    embedder: str | None = None
    #: Teacher labels to learn from (``cascade label``'s ``labelled.csv``); None: the dataset's gold labels.
    labels_file: str | None = None
    #: With ``labels_file``: learn from the teacher's probabilities (its soft labels) where the file has them, not
    #: only its argmax. On by default: it measured better (docs/embedders.md, "Soft labels").
    soft_labels: bool = True
    #: With ``labels_file``: the share of the labelled rows held out for calibration, drawn from the uniform
    #: rows only (at most all of them; active sampling's rows always train).
    calib_fraction: float = 0.5
    #: The agreement calibration guarantees (None: the task's ``[calibration] target``).
    target: float | None = None


def log(message: str) -> None:
    print(f"[build] {message}", flush=True)


def load_stage(task: TaskSpec, stage: Path, step: str) -> dict:
    path = Path(stage) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{stage}: nothing trained for task {task.name}; run `cascade train` before `{step}`")
    state = json.loads(path.read_text())
    if state.get("task_digest") != task.digest():
        raise ConfigError(f"{stage}: trained from another definition of task {task.name}; run `cascade train` again")
    return state


def stage_embedder(state: dict) -> embedders.Embedder:
    """The embedder the staged models were trained on (MiniLM for a stage from before it was recorded)."""
    return embedders.get(state.get("embedder", embedders.MINILM))
