"""``cascade train``: learn tiers 0-2 from the reference labels (gold, or the teacher's) into the stage folder,
with their probabilities on the held-out calibration rows and the LLM tiers' prompts."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cascade import contract
from cascade.errors import ConfigError
from cascade.repository import configgen
from cascade.repository.writer import RepositoryWriter
from cascade.tasks import TaskSpec, load_split
from cascade_export.build.labels_file import read_labelled, read_soft_labels, row_weights, uniform_rows
from cascade_export.build.llm_tiers import draw_few_shot, served_llm
from cascade_export.build.repo_embedder import embed, ensure_embedder, repository_embedder
from cascade_export.build.stage import CALIB_FILE, MODELS_DIR, STATE_FILE, BuildOptions, log

#: Training rows the int8 encoder is compared on against fp32 (export.encoder.quantize_if_cheap).
ENCODER_INT8_CHECK_ROWS = 500


def train_task(task: TaskSpec, repo: Path, stage: Path, opts: BuildOptions = BuildOptions()) -> dict:  # noqa: B008
    """``cascade train``: learn tiers 0-2 from the reference labels (gold, or the teacher's with
    ``opts.labels_file``) into ``stage/models`` (a model repository of the task's models), keep their
    probabilities on the held-out calibration rows in ``stage/calib.npz`` and fix the LLM tiers' prompts."""
    from cascade.runtime.onnx_runner import OnnxRunner
    from cascade_export.build import encoder as enc
    from cascade_export.build import tabular

    repo, stage = Path(repo), Path(stage)
    shutil.rmtree(stage / MODELS_DIR, ignore_errors=True)
    (stage / MODELS_DIR).mkdir(parents=True)
    timings: dict[str, float] = {}
    logreg_c: float | None = None
    t0 = time.perf_counter()
    ensure_embedder(repo, opts.embedder)
    embedding_dim = repository_embedder(repo).dim
    timings["embedder_export_s"] = time.perf_counter() - t0

    rng = np.random.default_rng(opts.seed)
    teacher_prompt = None
    soft = None
    teacher_probs = None  # the large tier's own probabilities, where it was the teacher (same model, same prompt)
    if opts.labels_file:
        texts, labels, summary = read_labelled(opts.labels_file, task)
        if opts.soft_labels:
            soft = read_soft_labels(opts.labels_file, labels, task.n_labels)
            if soft is None:
                log("soft labels asked for, but the labels file has no teacher probabilities: hard labels")
        reference = f"teacher labels ({summary.get('teacher', 'unknown teacher')}) from {opts.labels_file}"
        if str(summary.get("teacher", "")).startswith(contract.TIER_NAMES[contract.TIER_LLM_LARGE]):
            teacher_prompt = summary.get("teacher_prompt")  # the large tier keeps the prompt that taught
            if teacher_prompt is not None and _teacher_model(summary) == served_llm(repo, contract.TIER_LLM_LARGE):
                teacher_probs = read_soft_labels(opts.labels_file, labels, task.n_labels, fill_missing=False)
        order = rng.permutation(len(texts))
        uniform = uniform_rows(opts.labels_file)  # calibration draws from these only; active rows all train
        n_calib = min(round(len(texts) * opts.calib_fraction), int(uniform.sum()))
        if n_calib < 50 or len(texts) - n_calib < 50:
            raise ConfigError(f"{len(texts)} labelled rows are too few: need >= 50 to train and >= 50 to calibrate")
        calib_idx = order[uniform[order]][:n_calib]  # all uniform: order[:n_calib], as before active sampling
        train_idx = order[~np.isin(order, calib_idx)]
        if not uniform.all():
            log(f"calibrating on {n_calib} of {uniform.sum()} uniform rows; the {(~uniform).sum()} others train")
        weights = row_weights(opts.labels_file)
        if (weights > 1).any():  # a row of weight w trains as w copies (the user's examples beside the teacher's)
            log(f"{int((weights > 1).sum())} rows weigh more than one teacher label (up to {int(weights.max())})")
            train_idx = np.repeat(train_idx, weights[train_idx])
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
    x_soft = soft[train_idx] if soft is not None else None  # calibration always compares hard labels
    missing = [j for j in range(task.n_labels) if not (y == j).any()]
    if missing:  # a label no row holds (the teacher never gave it): its name is its one training row
        log(f"no training row of {len(missing)} label(s) ({', '.join(task.labels[j] for j in missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}): each learns from its own name as one row")  # fmt: skip
        x_texts += [task.labels[j] for j in missing]
        y = np.concatenate([y, missing])
        x_soft = (
            None if x_soft is None else np.concatenate([x_soft, np.eye(task.n_labels, dtype=x_soft.dtype)[missing]])
        )
    calib_probs: dict[int, np.ndarray] = {}
    if (
        contract.TIER_LLM_LARGE in task.tiers
        and teacher_probs is not None
        and np.isfinite(teacher_probs[calib_idx]).all()
    ):
        # The served large tier is the teacher: its probabilities on the calibration rows are the ones it labelled
        # them with, so calibration reads them instead of scoring the rows again (minutes of LLM time).
        calib_probs[contract.TIER_LLM_LARGE] = teacher_probs[calib_idx]
        log(f"tier 4 (llm_large): the teacher's own probabilities on the {len(calib_idx)} calibration rows")

    t = time.perf_counter()
    emb = embed(repo, x_texts + c_texts)
    x_emb, c_emb = emb[: len(x_texts)], emb[len(x_texts) :]
    timings["embed_s"] = time.perf_counter() - t
    log(f"embedded {len(emb)} rows in {timings['embed_s']:.1f} s")

    with RepositoryWriter(stage / MODELS_DIR) as writer:
        for tier in task.tiers:
            if tier not in contract.PER_TASK_TIERS:
                continue
            spec = configgen.tier_spec(task.name, tier, task.n_labels, embedding_dim=embedding_dim)
            t = time.perf_counter()
            if tier == contract.TIER_LOGREG:
                model = tabular.train_logreg(x_emb, y, probs=x_soft)
                tabular.export_logreg(model, writer.add(spec) / "model.onnx")
                logreg_c = float(model.C)
                log(f"tier 0 (logreg): C={logreg_c:g}, chosen by {tabular.LOGREG_CV_FOLDS}-fold cross-validation")
                calib_probs[tier] = model.predict_proba(c_emb)
            elif tier == contract.TIER_XGBOOST:
                model = tabular.train_xgboost(x_emb, y, seed=opts.seed, probs=x_soft)
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
                    backbone=repository_embedder(repo).name,  # the encoder starts from the embedder's backbone
                    soft_labels=x_soft,
                )
                version = writer.add(spec)
                enc.export_encoder(model, version)
                check = np.random.default_rng(opts.seed).permutation(len(x_texts))[:ENCODER_INT8_CHECK_ROWS]
                int8 = enc.quantize_if_cheap(version, [x_texts[i] for i in check], y[check])
                log(
                    f"encoder {'int8' if int8['int8'] else 'fp32'}: agreement {int8['int8_agreement']:.3f} int8 vs "
                    f"{int8['fp32_agreement']:.3f} fp32 on {int8['rows']} training rows"
                )
                timings["encoder_int8"] = float(int8["int8"])
                calib_probs[tier] = OnnxRunner(version, num_threads=2).run(c_texts)
            name = contract.TIER_NAMES[tier]
            timings[f"train_{name}_s"] = time.perf_counter() - t
            acc = float((calib_probs[tier].argmax(1) == c_y).mean())
            log(f"tier {tier} ({name}): trained in {timings[f'train_{name}_s']:.1f} s, held-out agreement {acc:.3f}")

    prompts = {}
    for tier in (t for t in task.tiers if t in contract.LLM_TIERS):
        if tier == contract.TIER_LLM_LARGE and teacher_prompt is not None:
            prompts[tier] = teacher_prompt
        else:  # few-shot examples from the reference labels of the training rows
            examples = draw_few_shot(x_texts, y, task.llm[tier].few_shot, task.n_labels, rng)
            prompts[tier] = task.llm[tier].gate_prompt(examples)
    np.savez(
        stage / CALIB_FILE,
        texts=np.array(c_texts, dtype=object),
        labels=c_y,
        **{f"tier{t}": p for t, p in calib_probs.items()},
    )
    state = {
        "task": task.name,
        "task_digest": task.digest(),
        "labels": list(task.labels),
        "embedder": repository_embedder(repo).name,
        "reference": reference,
        "options": asdict(opts),
        "train_rows": len(x_texts),
        "calib_rows": len(c_texts),
        "prompts": {contract.TIER_NAMES[t]: p for t, p in prompts.items()},
        # LLM tiers whose calibration probabilities are the teacher's own (not scored again by cascade calibrate)
        "teacher_scored": [contract.TIER_NAMES[t] for t in calib_probs if t in contract.LLM_TIERS],
        "logreg_C": logreg_c,  # tabular.choose_c's pick (None without tier 0)
        "timings": timings,
    }
    (stage / STATE_FILE).write_text(json.dumps(state, indent=2))
    return state


def _teacher_model(summary: dict) -> str | None:
    """The model behind an ``llm_large`` teacher (its name is ``llm_large:<served model>:<prompt digest>``; the served
    model is a GGUF role or an endpoint's ``openai:MODEL@URL``)."""
    head, _, rest = str(summary.get("teacher", "")).partition(":")
    served, _, digest = rest.rpartition(":")
    return served if head == contract.TIER_NAMES[contract.TIER_LLM_LARGE] and served and digest else None
