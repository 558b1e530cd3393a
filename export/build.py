"""Build a task into a model repository: embed, train tiers 0-2, calibrate thresholds, export.

Until the distillation issue lands, the tiers learn from the dataset's gold labels and the
thresholds are calibrated on held-out gold labels (provisional: the teacher will replace gold).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cascade import configgen, contract
from cascade.calibrate import calibrate_cascade
from cascade.errors import ConfigError
from cascade.export.repository import RepositoryWriter
from cascade.gate import GateConfig
from cascade.tasks import TaskSpec, load_split

EMBEDDER_FILES = ("model.onnx", "tokenizer.json")


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
    #: Teacher labels to learn from (``cascade label``'s ``labelled.csv``); None: the dataset's gold labels.
    labels_file: str | None = None
    #: With ``labels_file``: the share of the labelled rows held out for calibration.
    calib_fraction: float = 0.3


def read_labelled(path: str | Path, task: TaskSpec) -> tuple[list[str], np.ndarray, dict]:
    """``labelled.csv`` (id, text, label) and the ``labels.json`` summary written beside it."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"labels file {path} not found: run `cascade label` first")
    frame = pd.read_csv(path, keep_default_na=False)
    if not {"text", "label"} <= set(frame.columns):
        raise ConfigError(f"{path}: needs columns text and label (columns: {list(frame.columns)})")
    labels = frame["label"].to_numpy()
    if len(frame) == 0 or labels.min() < 0 or labels.max() >= task.n_labels:
        raise ConfigError(f"{path}: labels must be indices 0-{task.n_labels - 1} of task {task.name}")
    summary_path = path.with_name("labels.json")
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if summary.get("task", task.name) != task.name:
        raise ConfigError(f"{path} holds labels of task {summary['task']!r}, not {task.name!r}")
    return frame["text"].astype(str).tolist(), labels.astype(np.int64), summary


def log(message: str) -> None:
    print(f"[build] {message}", flush=True)


def embedder_dir(repo: Path) -> Path:
    return Path(repo) / contract.EMBEDDER_MODEL / "1"


def ensure_embedder(repo: Path, force: bool = False) -> Path:
    """Export MiniLM-L6 to ONNX into the repository once (shared by every task)."""
    from cascade.export.embedder import export_embedder

    target = embedder_dir(repo)
    if not force and all((target / f).is_file() for f in EMBEDDER_FILES):
        return target
    start = time.perf_counter()
    with RepositoryWriter(repo) as writer:
        export_embedder(writer.add(configgen.embedder_spec()))
    log(f"exported the embedder to ONNX in {time.perf_counter() - start:.1f} s")
    return target


def embed(repo: Path, texts: list[str]) -> np.ndarray:
    from cascade.runtime import OnnxRunner

    return OnnxRunner(embedder_dir(repo), num_threads=2).run(texts)


#: Which packaged GGUF serves each LLM tier on CPU (chosen by measurement: README, "LLM tiers").
LLM_ROLES = {contract.TIER_LLM_SMALL: "smollm2-135m:f16", contract.TIER_LLM_LARGE: "gemma3-270m"}
LLM_N_CTX = 1024


def llm_specs() -> list[configgen.ModelSpec]:
    # Contextual calibration on by default; a task prompt's ``calibrate`` overrides it per request.
    return [configgen.llm_spec(t, LLM_ROLES[t], n_ctx=LLM_N_CTX, calibrate=True) for t in LLM_ROLES]


def ensure_llms(repo: Path) -> None:
    """Write the shared LLM scorer models (one copy whatever the number of tasks) where missing or stale."""
    stale = []
    for spec in llm_specs():
        config = Path(repo) / spec.name / "config.pbtxt"
        if not config.is_file() or config.read_text() != spec.to_pbtxt():
            stale.append(spec)
    if stale:
        with RepositoryWriter(repo) as writer:
            for spec in stale:
                writer.add(spec)


def llm_scorer_on(tier: int, gate_prompt: dict, texts: list[str]):
    """Probabilities of an LLM tier on the rows ``idx`` of ``texts``, computed only when asked."""
    from cascade.gate import prompt_template
    from cascade.llm import LlamaScorer, gguf_path

    template = prompt_template(gate_prompt)
    calibrate = gate_prompt.get("calibrate")
    scorer = None

    def score(idx: np.ndarray) -> np.ndarray:
        nonlocal scorer
        if idx.size == 0:
            return np.zeros((0, len(template.verbalizations)), np.float32)
        if scorer is None:
            scorer = LlamaScorer(gguf_path(LLM_ROLES[tier]), n_ctx=LLM_N_CTX)
        start = time.perf_counter()
        probs = scorer.score([template.format(texts[i]) for i in idx], template.verbalizations, calibrate).probs
        log(f"tier {tier} ({contract.TIER_NAMES[tier]}): scored {idx.size} rows in {time.perf_counter() - start:.1f} s")
        return probs

    return score


#: Few-shot examples are drawn among training rows of this many words where enough exist: very short rows
#: ("a bore") teach little and long ones lengthen every prompt (cascade.bench_llm draws the same way).
FEW_SHOT_WORDS = (8, 40)


def draw_few_shot(texts: list[str], labels: np.ndarray, k: int, n_labels: int, rng) -> list[tuple[str, int]]:
    """``k`` labelled examples, as balanced over the labels as ``k`` allows, in a shuffled order."""
    if k <= 0:
        return []
    lo, hi = FEW_SHOT_WORDS
    words = np.array([len(t.split()) for t in texts])
    picked = []
    for label in range(n_labels):
        take = k // n_labels + (1 if label < k % n_labels else 0)
        idx = np.flatnonzero(labels == label)
        moderate = idx[(words[idx] >= lo) & (words[idx] <= hi)]
        pool = moderate if moderate.size >= take else idx
        picked += [(texts[i], label) for i in rng.choice(pool, size=min(take, pool.size), replace=False)]
    order = rng.permutation(len(picked))
    return [picked[i] for i in order]


def build_task(task: TaskSpec, repo: Path, opts: BuildOptions = BuildOptions()) -> dict:
    from cascade.export import encoder as enc
    from cascade.export import tabular
    from cascade.runtime import OnnxRunner

    repo = Path(repo)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ensure_embedder(repo)
    timings["embedder_export_s"] = time.perf_counter() - t0

    rng = np.random.default_rng(opts.seed)
    teacher_prompt = None
    if opts.labels_file:
        texts, labels, summary = read_labelled(opts.labels_file, task)
        reference = f"teacher labels ({summary.get('teacher', 'unknown teacher')}) from {opts.labels_file}"
        if str(summary.get("teacher", "")).startswith(contract.TIER_NAMES[contract.TIER_LLM_LARGE]):
            teacher_prompt = summary.get("teacher_prompt")  # the large tier keeps the prompt that taught
        order = rng.permutation(len(texts))
        n_calib = round(len(texts) * opts.calib_fraction)
        if n_calib < 50 or len(texts) - n_calib < 50:
            raise ConfigError(f"{len(texts)} labelled rows are too few: need >= 50 to train and >= 50 to calibrate")
        train_idx, calib_idx = order[n_calib:], order[:n_calib]
    else:
        texts, labels = load_split(task, "train", opts.data_dir)
        reference = "gold labels of the dataset"
        order = rng.permutation(len(texts))
        need = opts.train_rows + opts.calib_rows
        if len(order) < need:
            raise ConfigError(f"task {task.name}: {len(order)} training rows, need {need}")
        train_idx, calib_idx = order[: opts.train_rows], order[opts.train_rows : need]
    x_texts = [texts[i] for i in train_idx]
    y = np.array([labels[i] for i in train_idx])
    c_texts = [texts[i] for i in calib_idx]
    c_y = np.array([labels[i] for i in calib_idx])

    t = time.perf_counter()
    emb = embed(repo, x_texts + c_texts)
    x_emb, c_emb = emb[: len(x_texts)], emb[len(x_texts) :]
    timings["embed_s"] = time.perf_counter() - t
    log(f"embedded {len(emb)} rows in {timings['embed_s']:.1f} s")

    calib_probs: dict[int, np.ndarray] = {}
    with RepositoryWriter(repo) as writer:
        for tier in task.tiers:
            if tier not in contract.PER_TASK_TIERS:
                continue
            spec = configgen.tier_spec(task.name, tier, task.n_labels)
            t = time.perf_counter()
            if tier == contract.TIER_LOGREG:
                model = tabular.train_logreg(x_emb, y)
                tabular.export_logreg(model, writer.add(spec) / "model.onnx")
                calib_probs[tier] = model.predict_proba(c_emb)
            elif tier == contract.TIER_XGBOOST:
                model = tabular.train_xgboost(x_emb, y, seed=opts.seed)
                tabular.export_xgboost(model, writer.add(spec) / "model.onnx")
                calib_probs[tier] = model.predict_proba(c_emb)
            else:
                model = enc.train_encoder(
                    x_texts,
                    y.tolist(),
                    task.n_labels,
                    epochs=opts.encoder_epochs,
                    seed=opts.seed,
                    progress=opts.progress,
                )
                version = writer.add(spec)
                enc.export_encoder(model, version)
                calib_probs[tier] = OnnxRunner(version, num_threads=2).run(c_texts)
            name = contract.TIER_NAMES[tier]
            timings[f"train_{name}_s"] = time.perf_counter() - t
            acc = float((calib_probs[tier].argmax(1) == c_y).mean())
            log(f"tier {tier} ({name}): trained in {timings[f'train_{name}_s']:.1f} s, held-out accuracy {acc:.3f}")

        prompts = {}
        for tier in (t for t in task.tiers if t in contract.LLM_TIERS):
            if tier == contract.TIER_LLM_LARGE and teacher_prompt is not None:
                prompts[tier] = teacher_prompt
            else:  # few-shot examples from the reference labels of the training rows
                examples = draw_few_shot(x_texts, y, task.llm[tier].few_shot, task.n_labels, rng)
                prompts[tier] = task.llm[tier].gate_prompt(examples)
            ensure_llms(repo)
            calib_probs[tier] = llm_scorer_on(tier, prompts[tier], c_texts)

        keep = opts.keep_all_tiers
        calibration = calibrate_cascade(
            calib_probs, c_y, task.target, task.delta, opts.min_coverage, best_fallback=not keep
        )
        enabled = tuple(c.tier for c in calibration if c.enabled or keep)
        thresholds = {c.tier: (c.threshold if c.enabled else 1.0) for c in calibration if c.tier != enabled[-1]}
        thresholds = {t: v for t, v in thresholds.items() if t in enabled}
        prompts = {t: p for t, p in prompts.items() if t in enabled}
        gate = GateConfig(task=task.name, labels=task.labels, tiers=enabled, thresholds=thresholds, prompts=prompts)
        gate_version = writer.add(configgen.gate_spec(gate.to_parameters(), task.name, task.n_labels))
        report = {
            "task": task.name,
            "task_digest": task.digest(),
            "labels": list(task.labels),
            "reference": reference,
            "options": asdict(opts),
            "train_rows": len(x_texts),
            "calib_rows": len(c_texts),
            "target": task.target,
            "delta": task.delta,
            "calibration": [c.to_dict() for c in calibration],
            "gate": gate.to_parameters(),
            "timings": timings,
        }
        (gate_version.parent / "build_report.json").write_text(json.dumps(report, indent=2))
    for c in calibration:
        name = f"tier {c.tier} ({contract.TIER_NAMES[c.tier]})"
        if c.enabled and c.threshold is None:
            log(f"{name} answers the {c.rows} rows that reach it: agreement {c.agreement:.3f} {c.note}".rstrip())
        elif c.note:
            log(f"{name} DISABLED: {c.note}")
        else:
            log(
                f"{name} {'enabled' if c.enabled else 'DISABLED'}: threshold {c.threshold or 0:.3f}, "
                f"reaches {c.rows} rows, accepts {c.coverage:.1%}, agreement {c.agreement:.3f} "
                f"(lower bound {c.lower_bound:.3f}, target {task.target})"
            )
    timings["total_s"] = time.perf_counter() - t0
    log(f"task {task.name} written to {repo} in {timings['total_s']:.1f} s")
    return report
