"""Does the calibration guarantee hold? Distillation evaluated over resampled splits.

``python -m cascade.bench.distill [--tasks sst2 ag_news] [--splits 20] [--target 0.95] [--delta 0.05]``

For each task, a pool of training-split rows labelled by a teacher (``cascade label``'s
``runs/<task>/labelled.csv``; the rows' ids are their positions in the dataset's train split, so gold is
known) and, as a clearly labelled control, the same rows with their **gold** labels as the teacher:

1. the first ``--train`` rows of the pool (seeded shuffle) train tier 0 (LR, its C cross-validated), tier 1
   (XGBoost) and tier 2 (the encoder) on the teacher's labels, once;
2. the other rows are split ``--splits`` times at random into a calibration half and a test half that
   calibration never sees; thresholds are calibrated on the first (target, delta; Clopper-Pearson) with
   the teacher as the fallback tier, and measured on the second: per tier coverage, agreement with the
   teacher, accuracy against gold, and whether every thresholded tier's agreement on the test half
   stayed >= target (the guarantee, checked per tier and pooled over the thresholded tiers; a tier that
   accepts few test rows makes the per-tier check noisy).

The small LLM tier (3) is left out: scoring every pool row with it would dominate the run time.
JSON goes to ``bench/results/distill-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cascade import contract
from cascade.calibrate import calibrate_cascade
from cascade.paths import DEFAULT_REPO, RESULTS_DIR, RUNS_DIR
from cascade.results import save_result

CHEAP_TIERS = (contract.TIER_LOGREG, contract.TIER_XGBOOST, contract.TIER_ENCODER)
TEACHER_TIER = contract.TIER_LLM_LARGE


def tier_probs(
    task,
    texts: list[str],
    train: np.ndarray,
    labels: np.ndarray,
    repo: Path,
    epochs: int,
    seed: int,
    emb: np.ndarray,
    soft: np.ndarray | None = None,
    encoder: bool = True,
):
    """Tiers 0-2 (without the encoder if not ``encoder``) trained on ``labels[train]`` (or the soft labels
    ``soft[train]``), with their probabilities on every row of the pool (``emb``: its embeddings)."""
    from cascade_export.build import encoder as enc
    from cascade_export.build import tabular
    from cascade_export.build.repo_embedder import repository_embedder

    out, timings = {}, {}
    t = time.perf_counter()
    x_soft = soft[train] if soft is not None else None
    model = tabular.train_logreg(emb[train], labels[train], probs=x_soft)
    out[contract.TIER_LOGREG] = model.predict_proba(emb)
    timings["logreg_s"] = time.perf_counter() - t
    timings["logreg_C"] = float(model.C)  # chosen by cross-validation (tabular.choose_c)
    t = time.perf_counter()
    model = tabular.train_xgboost(emb[train], labels[train], seed=seed, probs=x_soft)
    out[contract.TIER_XGBOOST] = model.predict_proba(emb)
    timings["xgboost_s"] = time.perf_counter() - t
    if not encoder:
        return out, timings
    t = time.perf_counter()
    model = enc.train_encoder(
        [texts[i] for i in train],
        labels[train].tolist(),
        task.n_labels,
        epochs=epochs,
        seed=seed,
        progress=False,
        backbone=repository_embedder(repo).name,
        soft_labels=x_soft,
    )
    out[contract.TIER_ENCODER] = enc.predict_proba(model, texts)
    timings["encoder_s"] = time.perf_counter() - t
    return out, timings


def evaluate_splits(
    probs: dict[int, np.ndarray],
    teacher: np.ndarray,
    gold: np.ndarray,
    rest: np.ndarray,
    splits: int,
    target: float,
    delta: float,
    seed: int,
    calib_rows: int | None = None,
) -> dict:
    """Calibrate on ``calib_rows`` of ``rest`` (default: half), measure on the others, ``splits`` times."""
    n_labels = next(iter(probs.values())).shape[1]
    runs = []
    rng = np.random.default_rng(seed)
    for _ in range(splits):
        order = rng.permutation(rest)
        cut = calib_rows if calib_rows is not None else len(order) // 2
        calib, test = order[:cut], order[cut:]
        tiers = {t: p[calib] for t, p in probs.items()}
        tiers[TEACHER_TIER] = np.eye(n_labels)[teacher[calib]]  # the teacher agrees with itself
        cal = calibrate_cascade(tiers, teacher[calib], target, delta)
        pending = np.ones(len(test), bool)
        answered = np.full(len(test), -1)
        tier_of = np.full(len(test), -1)
        for c in cal:
            if not c.enabled:
                continue
            p = probs[c.tier][test] if c.tier != TEACHER_TIER else np.eye(n_labels)[teacher[test]]
            take = pending & ((p.max(axis=1) >= c.threshold) if c.threshold is not None else True)
            answered[take] = p[take].argmax(axis=1)
            tier_of[take] = c.tier
            pending &= ~take
        per_tier = {}
        held = True
        for c in cal:
            mask = tier_of == c.tier
            agree = float((answered[mask] == teacher[test][mask]).mean()) if mask.any() else None
            if c.enabled and c.threshold is not None and agree is not None and agree < target:
                held = False
            per_tier[contract.TIER_NAMES[c.tier]] = {
                "enabled": c.enabled,
                "threshold": c.threshold,
                "share": float(mask.mean()),
                "agreement": agree,
                "gold_accuracy": float((answered[mask] == gold[test][mask]).mean()) if mask.any() else None,
            }
        cheap = np.isin(tier_of, CHEAP_TIERS)
        thresholded = np.isin(tier_of, [c.tier for c in cal if c.enabled and c.threshold is not None])
        pooled = float((answered[thresholded] == teacher[test][thresholded]).mean()) if thresholded.any() else None
        runs.append(
            {
                "guarantee_held": held,
                # all rows the thresholded tiers accepted, together (per tier, few accepted rows make noisy checks)
                "pooled_agreement": pooled,
                "pooled_held": pooled is None or pooled >= target,
                "tiers": per_tier,
                "cheap_share": float(cheap.mean()),
                "cheap_agreement": float((answered[cheap] == teacher[test][cheap]).mean()) if cheap.any() else None,
                "llm_share": float(np.isin(tier_of, list(contract.LLM_TIERS)).mean()),
                "agreement": float((answered == teacher[test]).mean()),
                "gold_accuracy": float((answered == gold[test]).mean()),
                "teacher_gold_accuracy": float((teacher[test] == gold[test]).mean()),
            }
        )
    return {"splits": runs, "summary": summarize(runs)}


def summarize(runs: list[dict]) -> dict:
    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    tiers = {}
    for name in runs[0]["tiers"]:
        rows = [r["tiers"][name] for r in runs]
        tiers[name] = {
            "enabled_in": sum(r["enabled"] for r in rows),
            "share": mean([r["share"] for r in rows]),
            "agreement": mean([r["agreement"] for r in rows]),
            "gold_accuracy": mean([r["gold_accuracy"] for r in rows]),
        }
    return {
        "guarantee_held_in": sum(r["guarantee_held"] for r in runs),
        "pooled_held_in": sum(r["pooled_held"] for r in runs),
        "pooled_agreement": mean([r["pooled_agreement"] for r in runs]),
        "splits": len(runs),
        "cheap_share": mean([r["cheap_share"] for r in runs]),
        "cheap_agreement": mean([r["cheap_agreement"] for r in runs]),
        "llm_share": mean([r["llm_share"] for r in runs]),
        "agreement": mean([r["agreement"] for r in runs]),
        "gold_accuracy": mean([r["gold_accuracy"] for r in runs]),
        "teacher_gold_accuracy": mean([r["teacher_gold_accuracy"] for r in runs]),
        "tiers": tiers,
    }


def run_task(task_name: str, args) -> dict:
    import pandas as pd

    from cascade.tasks import load_split, load_task
    from cascade_export.build.labels_file import read_labelled, read_soft_labels, uniform_rows
    from cascade_export.build.repo_embedder import embed, ensure_embedder

    task = load_task(task_name)
    labelled = Path(args.work_dir) / task.name / "labelled.csv"
    texts, teacher_labels, summary = read_labelled(labelled, task)
    soft = read_soft_labels(labelled, teacher_labels, task.n_labels) if args.soft_labels else None
    if args.soft_labels and soft is None:
        raise SystemExit(f"{labelled}: no teacher probabilities (prob_* columns) for --soft-labels")
    ids = pd.read_csv(labelled, keep_default_na=False)["id"].to_numpy()
    _, gold_all = load_split(task, "train", args.data_dir)
    gold = np.asarray(gold_all)[ids]
    order = np.random.default_rng(args.seed).permutation(len(texts))
    candidates, rest = split_pool(order, uniform_rows(labelled), args.train, args.heldout, labelled)
    calib_rows = args.calib if args.calib is not None else len(rest) // 2
    if not 50 <= calib_rows <= len(rest) - 100:
        raise SystemExit(f"--calib {calib_rows}: need >= 50 calibration rows and >= 100 test rows of {len(rest)}")
    out = {
        "task": task.name,
        "teacher": summary.get("teacher"),
        "pool_rows": len(texts),
        "train_rows": args.train,
        "calib_rows": calib_rows,
        "test_rows": len(rest) - calib_rows,
        "teacher_gold_agreement": float((teacher_labels == gold).mean()),
        "candidate_rows": len(candidates),
        "results": {},
    }
    ensure_embedder(Path(args.repo), args.embedder)
    emb = embed(Path(args.repo), texts)
    references = [("teacher", teacher_labels, soft)]
    if not args.no_gold_control:
        references.append(("gold_control", gold, None))
    for strategy in args.strategies:
        train = training_rows(strategy, candidates, args.train, emb, teacher_labels)
        for name, reference, soft_reference in references:
            start = time.perf_counter()
            probs, timings = tier_probs(
                task, texts, train, reference, Path(args.repo), args.encoder_epochs, args.seed, emb,
                soft_reference, not args.no_encoder,
            )  # fmt: skip
            result = evaluate_splits(
                probs, reference, gold, rest, args.splits, args.target, args.delta, args.seed, calib_rows
            )
            result["train_timings"] = timings
            result["wall_s"] = time.perf_counter() - start
            key = name if args.strategies == ["uniform"] else f"{name}_{strategy}"
            out["results"][key] = result
            s = result["summary"]
            print(
                f"{task.name:8s} {key:12s} guarantee {s['guarantee_held_in']}/{s['splits']} per tier, "
                f"{s['pooled_held_in']}/{s['splits']} pooled  tiers 0-2 answer "
                f"{s['cheap_share']:.1%} at agreement {s['cheap_agreement'] or 0:.3f}  "
                f"LLM share {s['llm_share']:.1%}  agreement {s['agreement']:.3f}  "
                f"gold accuracy {s['gold_accuracy']:.3f}",
                flush=True,
            )
    return out


def split_pool(order: np.ndarray, uniform: np.ndarray, train: int, heldout: int | None, where="pool"):
    """``(candidates, held)`` of a shuffled pool: ``heldout`` rows (default: all but ``train``) for calibration and
    test, taken from the **uniform** rows only and the same for every strategy (the guarantee is about the rows a
    cascade will see; rows chosen for being hard are not those), and the other rows, in ``order``, to train on."""
    uniform_order = order[uniform[order]]
    held_n = heldout if heldout is not None else len(order) - train
    if held_n < 200 or held_n > len(uniform_order) or len(order) - held_n < train:
        raise SystemExit(
            f"{where}: {len(order)} rows ({len(uniform_order)} uniform); need --train {train} + --heldout "
            f"{held_n} (>= 200 uniform rows)"
        )
    held = uniform_order[len(uniform_order) - held_n :]
    return order[~np.isin(order, held)], held


def training_rows(strategy: str, candidates: np.ndarray, n: int, emb: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """The ``n`` pool rows the tiers learn from. ``uniform``: the first ``n`` candidates (a uniform sample).
    ``active``, simulated on the labelled pool as ``cascade label --strategy active`` chooses: the first half as
    the uniform seed, then the candidates tier 0 fitted on the seed's teacher labels is least sure of. The
    candidates are the labelled rows outside the held-out ones, a far smaller pool than the table ``cascade
    label`` picks from, so this understates what active sampling can gain."""
    from cascade_export.distill.active import least_confident

    if strategy == "uniform":
        return candidates[:n]
    seed, others = candidates[: n // 2], candidates[n // 2 :]
    picked, _ = least_confident(emb[seed], teacher[seed], emb[others], n - len(seed))
    return np.concatenate([seed, others[picked]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cascade.bench.distill", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "ag_news"])
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--train", type=int, default=1000, help="pool rows the tiers learn from")
    parser.add_argument("--calib", type=int, default=None, help="calibration rows per split (default: half the rest)")
    parser.add_argument(
        "--heldout", type=int, default=None, help="uniform rows held out for calibration + test (default: the rest)"
    )
    parser.add_argument(
        "--strategies", nargs="+", choices=["uniform", "active"], default=["uniform"],
        help="how the --train rows are chosen from the pool (active: simulated, see training_rows)",
    )  # fmt: skip
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--delta", type=float, default=0.05)
    parser.add_argument("--encoder-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=str(RUNS_DIR))
    parser.add_argument("--repo", default=str(DEFAULT_REPO), help="for the embedder")
    parser.add_argument("--embedder", default=None, help="the repository's embedder (a new --repo: its default)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--soft-labels", action="store_true", help="tiers learn from the teacher's probabilities")
    parser.add_argument("--no-encoder", action="store_true", help="tiers 0-1 only (the encoder's fine-tune is slow)")
    parser.add_argument("--no-gold-control", action="store_true", help="skip the gold-label control run")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = {
        "benchmark": "distill",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "target": args.target,
        "delta": args.delta,
        "splits": args.splits,
        "embedder": args.embedder,
        "soft_labels": args.soft_labels,
        "train": args.train,
        "command": "python -m cascade.bench.distill " + " ".join(argv if argv is not None else sys.argv[1:]),
        "tasks": [run_task(name, args) for name in args.tasks],
    }
    if not args.no_save:
        print(f"saved {save_result('distill', result, RESULTS_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
