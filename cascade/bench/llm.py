"""Measure the CPU LLM scorers: accuracy, ms/row at batch 1 and 16, peak RSS, per model x prompt x dataset.

``python -m cascade.bench.llm [--models ...] [--tasks sst2 ag_news] [--variants zs fs8 ...] [--rows 300]``

Each model runs in its own process, so its peak RSS (``resource.getrusage``) is its own. A "variant" is
``<prompt>[+fs<k>][+s<seed>][+prefix]``: a named prompt wording from :data:`PROMPTS` (``+chat`` ones use SmolLM2's
chat template), optionally with k balanced few-shot examples drawn from the train split with a fixed seed
(``+s<seed>`` draws other examples: raw few-shot accuracy depends on the draw, calibrated much less).
Every variant is scored once at batch 16 and reported twice, raw and with contextual calibration (the same
forward passes: calibration only divides out the content-free prior), then again at batch 1 for timing.
``--split dev`` scores rows outside the evaluation sample (prompt search without touching the test rows).
JSON goes to ``bench/results/llm-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import platform
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cascade import paths
from cascade.bench.llm_data import SEED, BenchTask, eval_rows, few_shot
from cascade.contract import TIER_LLM_LARGE, TIER_LLM_SMALL
from cascade.llm.gguf import MODEL_GEMMA3, MODEL_SMOLLM2
from cascade.llm.prompts import PromptTemplate
from cascade.llm.scorer import SCORING_PREFIX, SCORING_WHOLE
from cascade.results import save_result
from cascade.tasks import load_task, prompt_from_question

# The task definitions (tasks/*.toml) give the dataset folder, the labels and the tuned prompts; the splits and the
# few-shot example lengths are the benchmark's own.
_SPECS = {name: load_task(name) for name in ("sst2", "ag_news")}
TASKS = {
    name: BenchTask(name, _SPECS[name].dataset.dir, eval_split, dev_split, _SPECS[name].labels, shot_words)
    for name, eval_split, dev_split, shot_words in (
        ("sst2", "validation", "validation", (8, 30)),
        ("ag_news", "test", "train", (15, 40)),
    )
}


def _either(words: tuple[str, ...]) -> str:
    """``"A, B or C"``: the answers a question names."""
    return ", ".join(words[:-1]) + " or " + words[-1]


def _tuned(task: str, tier: int) -> dict:
    """The prompt ``tasks/<task>.toml`` chose for ``tier`` (the variant named after its wording follows the file)."""
    prompt = _SPECS[task].llm[tier]
    out = {"template": prompt.template, "verbalizations": prompt.verbalizations}
    return out | ({"instruction": prompt.instruction} if prompt.instruction else {})


_CHAT_SYS = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
_SENTIMENTS = TASKS["sst2"].labels  # SST-2's label names are its answer words too
_POS_NEG = _either(_SENTIMENTS[::-1])  # "positive or negative": the usual English order, the labels' reversed
# AG News answer words: the tuned large-tier prompt's (Technology for the label Sci/Tech), kept for the variants below;
# "topic_science" deliberately answers Science instead.
_TOPICS = _SPECS["ag_news"].llm[TIER_LLM_LARGE].verbalizations
_TOPICS_SCIENCE = tuple("Science" if word == "Technology" else word for word in _TOPICS)

# Prompt wordings per task: keyword arguments of PromptTemplate (few_shot is added by the variant). "review",
# "review_terrible", "lower" and "topic" are the prompts tasks/*.toml chose for llm_small and llm_large.
PROMPTS: dict[str, dict[str, dict]] = {
    "sst2": {
        "review": _tuned("sst2", TIER_LLM_SMALL),
        "review_inst": {
            "instruction": f"Classify the sentiment of each movie review as {_POS_NEG}.",
            "template": "Review: {text}\nSentiment:",
            "verbalizations": _SENTIMENTS,
        },
        # Other answer words than the labels, on purpose.
        "review_goodbad": {"template": "Review: {text}\nThe movie was", "verbalizations": ("bad", "good")},
        "review_terrible": _tuned("sst2", TIER_LLM_LARGE),
        "question": {
            "template": f"{{text}}\nQuestion: Is this movie review {_POS_NEG}?\nAnswer:",
            "verbalizations": _SENTIMENTS,
        },
        "quote": {
            "template": f'Movie review: "{{text}}"\nSentiment of the review ({_POS_NEG}):',
            "verbalizations": _SENTIMENTS,
        },
        "chat": {
            "template": _CHAT_SYS + f"<|im_start|>user\nIs the sentiment of this movie review {_POS_NEG}?"
            "\n\nReview: {text}<|im_end|>\n<|im_start|>assistant\nThe sentiment is",
            "verbalizations": _SENTIMENTS,
        },
    },
    "ag_news": {
        "topic": _tuned("ag_news", TIER_LLM_LARGE),
        "topic_inst": {
            "instruction": f"Classify each news article as {_either(_TOPICS)}.",
            "template": "Article: {text}\nTopic:",
            "verbalizations": _TOPICS,
        },
        "topic_science": {
            "instruction": f"Classify each news article as {_either(_TOPICS_SCIENCE)}.",
            "template": "Article: {text}\nTopic:",
            "verbalizations": _TOPICS_SCIENCE,
        },
        "section": {"template": "{text}\nThis news article belongs to the section:", "verbalizations": _TOPICS},
        "lower": _tuned("ag_news", TIER_LLM_SMALL),
        "question": {
            "template": f"{{text}}\nQuestion: Is this news about {_either(_TOPICS)}?\nAnswer:",
            "verbalizations": _TOPICS,
        },
        "chat": {
            "template": _CHAT_SYS + f"<|im_start|>user\nWhat is the topic of this news article: {_either(_TOPICS)}?"
            "\n\nArticle: {text}<|im_end|>\n<|im_start|>assistant\nThe topic is",
            "verbalizations": _TOPICS,
        },
    },
}
# The zero-shot prompt styles compared for the teacher, the same for every model, all with the task's label names as
# the answer words (unlike the tuned prompts above, e.g. Sci/Tech rather than Technology):
# - "plain": what a new user writes with `cascade task create --prompt ... --labels ...` (zero-shot);
# - "chatml": the same question in the ChatML chat template of the instruct models (SmolLM2, Qwen2.5), no
#   system message; the answer is scored right after the assistant tag;
# - "ask": the allowed answers named in the question before the answer slot, a new user's other obvious wording;
# - "create", "create_before", "create_after": what `cascade task create --prompt QUESTION --labels ...` gives the
#   teacher (cascade.tasks.prompt_from_question), the allowed answers named where its rule puts them.
# The tuned prompts of tasks/*.toml are the "review_terrible+fs8" / "topic+fs4"-style variants above.
_NEWS = TASKS["ag_news"].labels
_QUESTIONS = {  # (plain template, question, field name, "ask" template)
    "sst2": ("Review: {text}\nSentiment:", f"Is the sentiment of this movie review {_POS_NEG}?", "Review",
             f"Review: {{text}}\nIs this review {_either(_SENTIMENTS)}?\nAnswer:"),
    "ag_news": ("Article: {text}\nTopic:", f"What is the topic of this news article: {_either(_NEWS)}?", "Article",
                f"Article: {{text}}\nIs this article about {_either(_NEWS)}?\nAnswer:"),
}  # fmt: skip
for _task, (_plain, _question, _field, _ask) in _QUESTIONS.items():
    _words = TASKS[_task].labels
    PROMPTS[_task]["plain"] = {"template": _plain, "verbalizations": _words}
    PROMPTS[_task]["chatml"] = {
        "template": f"<|im_start|>user\n{_question}\n\n{_field}: {{text}}<|im_end|>\n<|im_start|>assistant\n",
        "verbalizations": _words,
    }
    PROMPTS[_task]["ask"] = {"template": _ask, "verbalizations": _words}
    for _place in ("auto", "before", "after"):
        _instruction, _template = prompt_from_question(_question, _words, _place)
        PROMPTS[_task]["create" + ("" if _place == "auto" else "_" + _place)] = {
            "template": _template,
            "instruction": _instruction,
            "verbalizations": _words,
        }
#: Models with a ChatML chat template (the others skip the chat variants).
CHATML_MODELS = (MODEL_SMOLLM2, "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
DEFAULT_VARIANTS = {
    "sst2": ["create+prefix", "review+prefix", "review_terrible+fs8+prefix"],
    "ag_news": ["create+prefix", "topic+prefix", "topic+fs4+prefix"],
}
#: The models the CPU tiers serve (``cascade_export.build.llm_tiers.LLM_ROLES``).
DEFAULT_MODELS = ["smollm2-135m:f16", "qwen2.5-coder-1.5b"]


def make_template(task: BenchTask, variant: str, data_dir: Path) -> PromptTemplate:
    """The PromptTemplate of ``<prompt>[+fs<k>]``."""
    name, *mods = variant.split("+")
    kwargs = dict(PROMPTS[task.name][name])
    shots, seed = 0, SEED
    for mod in mods:
        if mod.startswith("fs") and mod[2:].isdigit():
            shots = int(mod[2:])
        elif mod.startswith("s") and mod[1:].isdigit():  # another draw of the few-shot examples
            seed = int(mod[1:])
        elif mod == "prefix":  # candidate scoring, set on the scorer (bench_model)
            continue
        else:
            raise SystemExit(f"unknown variant modifier {mod!r} in {variant!r} (fs<k>, s<seed> or prefix)")
    if shots:
        kwargs["few_shot"] = few_shot(task, data_dir, shots, seed)
    return PromptTemplate(**kwargs)


# --------------------------------------------------------------------------------------------- measuring


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_model(
    model: str,
    tasks: list[str],
    variants: dict[str, list[str]],
    data_dir: str,
    rows: int,
    b1_rows: int,
    split: str,
    n_ctx: int,
    n_threads: int = 2,
) -> dict:
    """All measurements of one model (run in a fresh process: its peak RSS is the model's)."""
    from cascade.llm.gguf import gguf_path
    from cascade.llm.scorer import LlamaScorer

    rss_start = _rss_mb()
    t = time.perf_counter()
    scorer = LlamaScorer(gguf_path(model), n_ctx=n_ctx, n_threads=n_threads)
    load_s = time.perf_counter() - t
    out: dict = {"model": model, "load_s": load_s, "rss_before_load_mb": rss_start, "results": []}
    for task_name in tasks:
        task = TASKS[task_name]
        texts, gold = eval_rows(task, Path(data_dir), rows, split)
        for variant in variants[task_name]:
            base = variant.split("+")[0]
            if base == "chat" and not model.startswith(MODEL_SMOLLM2):
                continue  # "chat" carries SmolLM2's own system message
            if base == "chatml" and not model.startswith(CHATML_MODELS):
                continue  # a base model (Gemma 3 270M) has no chat template
            template = make_template(task, variant, Path(data_dir))
            scorer.candidate_scoring = SCORING_PREFIX if "prefix" in variant.split("+") else SCORING_WHOLE
            prompts = [template.format(x) for x in texts]
            cands = template.verbalizations
            scorer.reset()
            before = scorer.evaluated_tokens
            t = time.perf_counter()
            probs, raw, trunc = [], [], []
            for i in range(0, len(prompts), 16):
                res = scorer.score(prompts[i : i + 16], cands, calibrate=True)
                probs.append(res.probs)
                raw.append(res.raw_probs)
                trunc.append(res.truncated)
            b16_ms = (time.perf_counter() - t) * 1000 / len(prompts)
            tokens_per_row = (scorer.evaluated_tokens - before) / len(prompts)
            p_cal, p_raw = np.concatenate(probs), np.concatenate(raw)
            b1_ms, b1_diff = None, None
            if b1_rows:
                scorer.reset()
                t = time.perf_counter()
                b1 = [scorer.score([p], cands, calibrate=True).probs[0] for p in prompts[:b1_rows]]
                b1_ms = (time.perf_counter() - t) * 1000 / min(b1_rows, len(prompts))
                b1_diff = float(np.abs(np.array(b1) - p_cal[: len(b1)]).max())
            row = {
                "load_average_1m_end": os.getloadavg()[0],  # > ~1 means another process shared the 2 cores
                "task": task_name,
                "variant": variant,
                "split": split,
                "rows": len(prompts),
                "shots": len(template.few_shot),
                "prefix_tokens": len(scorer.tokenize(prompts[0].prefix, bos=True, special=True)),
                "acc_raw": float((p_raw.argmax(1) == gold).mean()),
                "acc_cal": float((p_cal.argmax(1) == gold).mean()),
                "pred_dist_raw": np.bincount(p_raw.argmax(1), minlength=len(cands)).tolist(),
                "pred_dist_cal": np.bincount(p_cal.argmax(1), minlength=len(cands)).tolist(),
                "ms_per_row_b16": b16_ms,
                "ms_per_row_b1": b1_ms,
                "b1_vs_b16_max_abs_diff": b1_diff,
                "evaluated_tokens_per_row": tokens_per_row,
                "truncated_rows": int(np.concatenate(trunc).sum()),
                "content_free_prior": scorer.content_free_prior(prompts[0].prefix, prompts[0].suffix, cands).tolist(),
                "template": {
                    "instruction": template.instruction,
                    "template": template.template,
                    "verbalizations": list(cands),
                    "few_shot": [list(x) for x in template.few_shot],
                },
            }
            out["results"].append(row)
            print(
                f"  {model:17s} {task_name:8s} {variant:20s} raw {row['acc_raw']:.3f} cal {row['acc_cal']:.3f} "
                f"b16 {b16_ms:6.1f} ms b1 {b1_ms or 0:6.1f} ms  tok/row {tokens_per_row:.1f}",
                flush=True,
            )
    out["peak_rss_mb"] = _rss_mb()
    return out


def run(
    models: list[str],
    tasks: list[str],
    variants: dict[str, list[str]],
    data_dir: str | Path,
    rows: int = 300,
    b1_rows: int = 300,
    split: str = "eval",
    n_ctx: int = 1024,
    save: bool = True,
    n_threads: int = 2,
) -> dict:
    """Measure every model (each in a fresh process) and return (and save) the JSON result."""
    results = []
    spawn = multiprocessing.get_context("spawn")
    for model in models:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            job = pool.submit(
                bench_model, model, tasks, variants, str(data_dir), rows, b1_rows, split, n_ctx, n_threads
            )
            results.append(job.result())
    import llama_cpp

    result = {
        "benchmark": "llm",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform()},
        "llama_cpp_python": llama_cpp.__version__,
        "n_ctx": n_ctx,
        "n_threads": n_threads,
        "load_average_after": os.getloadavg(),
        "models": results,
        "notes": "acc_cal: the same forward passes with contextual calibration (content-free 'N/A' and ''); "
        "b1: one row per score() call; the KV cache of the shared prefix is reused across calls as well",
    }
    if save:
        result["path"] = str(save_result("llm", result, paths.RESULTS_DIR))
    return result


def print_table(result: dict) -> None:
    """The measured table, one line per model x task x variant."""
    cols = f"{'acc':>6s} {'acc+cal':>7s} {'b1 ms':>7s} {'b16 ms':>7s} {'RSS MB':>7s}"
    head = f"{'model':17s} {'task':8s} {'variant':20s} {cols}"
    print(head)
    print("-" * len(head))
    for m in result["models"]:
        for r in m["results"]:
            b1 = f"{r['ms_per_row_b1']:7.1f}" if r["ms_per_row_b1"] is not None else f"{'-':>7s}"
            print(
                f"{m['model']:17s} {r['task']:8s} {r['variant']:20s} {r['acc_raw']:6.3f} {r['acc_cal']:7.3f} "
                f"{b1} {r['ms_per_row_b16']:7.1f} {m['peak_rss_mb']:7.0f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cascade.bench.llm", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=DEFAULT_MODELS,
        help="model names, optionally :<quant> (cascade.llm.gguf.gguf_path)",
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument(
        "--variants", nargs="+", help="variants to run for every task, e.g. review review+fs8 (default per task)"
    )
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--b1-rows", type=int, default=None, help="rows timed at batch 1 (default: all)")
    parser.add_argument("--split", choices=["eval", "dev"], default="eval")
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None, help="datasets folder (default: the repository's data/)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)

    data_dir = paths.data_dir(args.data_dir)
    variants = {}
    for task in args.tasks:
        if args.variants:
            variants[task] = list(dict.fromkeys(v for v in args.variants if v.split("+")[0] in PROMPTS[task]))
        else:
            variants[task] = DEFAULT_VARIANTS[task]
    b1_rows = args.rows if args.b1_rows is None else args.b1_rows
    run_args = (args.models, args.tasks, variants, data_dir, args.rows, b1_rows, args.split, args.n_ctx)
    result = run(*run_args, save=not args.no_save, n_threads=args.threads)
    print_table(result)
    if "path" in result:
        print(f"saved {result['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["MODEL_GEMMA3", "MODEL_SMOLLM2", "PROMPTS", "TASKS", "main", "run"]
