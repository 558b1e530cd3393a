"""The teacher checked on gold examples, per task (``make bench-teacher-check``).

``python -m cascade.bench.teacher_check [--tasks sst2 ag_news clinc150] [--examples 50] [--test-rows 300] [--cascade]``

For each task, gold examples drawn from the training split (seed 0; ``--examples`` rows, or two per label where that is
more) stand in for the user's, the task's ``description`` is the plain question and its label names the labels, as a
user would type them. Through a real tritonserver's ``llm_large``,
:func:`cascade_export.distill.teacher_check.check_teacher` scores every prompt form on the examples and keeps the best.
The teacher's accuracy on ``--test-rows`` rows of the test split (never seen by the choice) is then measured with task
create's own form (the first form: label names, calibrated) and with the form kept.

With ``--cascade``, the check is ``cascade task create --examples``'s own: the task is created from the training split
(the default budget of teacher labels, the examples weighed as training labels) into the running server, and the
served cascade classifies the same test rows: its accuracy and the share of rows each tier answered.
JSON goes to ``bench/results/teacher-check-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cascade.results import command_line, now_iso, save_result
from cascade.tasks import load_split, load_task

TARGETS = {"sst2": 0.93, "ag_news": 0.85}


def n_examples_for(n: int, n_labels: int) -> int:
    """The examples drawn: ``n``, or two per label where that is more (CLINC150: 300)."""
    return max(n, 2 * n_labels)


def draw(texts: list[str], labels: list[int], n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    idx = np.random.default_rng(seed).choice(len(texts), size=min(n, len(texts)), replace=False)
    return [texts[i] for i in idx], [int(labels[i]) for i in idx]


def accuracy_of(client, prompt: dict, texts: list[str], gold: list[int]) -> tuple[float, float]:
    """The teacher's accuracy with ``prompt`` on these rows, and its rows per second."""
    from cascade_export.distill.teachers import ServerTeacher

    start = time.perf_counter()
    probs = ServerTeacher(client, prompt).label(None, texts)
    return float((probs.argmax(axis=1) == np.asarray(gold)).mean()), len(texts) / (time.perf_counter() - start)


def bench_task(client, name: str, n_examples: int, n_test: int, cascade: dict | None = None) -> dict:
    """One task's figures; ``cascade`` (the server's gRPC ``url``, its ``repo`` and a ``work`` folder) creates the
    task with task create and measures the served cascade too."""
    from cascade_export.distill.teacher_check import check_teacher
    from cascade_export.distill.teachers import ServerTeacher

    task = load_task(name)
    examples = draw(*load_split(task, "train"), n_examples_for(n_examples, task.n_labels))
    test = draw(*load_split(task, "test"), n_test, seed=1)  # a uniform draw: a split may be sorted by label
    if cascade is None:
        check = check_teacher(lambda p: ServerTeacher(client, p), task.description, list(task.labels), *examples)
        served = None
    else:
        check, served = create_and_serve(client, task, examples, test, **cascade)
    plain = next(f for f in check["forms"])  # task create's own form comes first
    result = {"task": name, "question": task.description, "labels": list(task.labels), "check": check}
    plain_prompt = _plain_prompt(task)
    result["test_rows"] = len(test[0])
    result["teacher_test_plain"], result["plain_rows_per_s"] = accuracy_of(client, plain_prompt, *test)
    chosen = check["chosen"]["prompt"]
    if chosen == plain_prompt:
        result["teacher_test_chosen"] = result["teacher_test_plain"]
    else:
        result["teacher_test_chosen"], result["chosen_rows_per_s"] = accuracy_of(client, chosen, *test)
    result["plain_form"] = plain["form"]
    result["cascade"] = served
    result["target"] = TARGETS.get(name)
    result["met"] = None if result["target"] is None else result["teacher_test_chosen"] >= result["target"]
    return result


def create_and_serve(client, task, examples, test, url: str, repo: Path, work: Path) -> tuple[dict, dict]:
    """``cascade task create --examples`` on the task's training split into the server, then the served cascade on
    the test rows: the check, and the cascade's accuracy, tier shares and the task create report's parts."""
    import pandas as pd

    from cascade_export.distill.commands import create_task
    from cascade_export.distill.examples import gold_report

    checks = []
    name = f"{task.name}_gold"
    example_file = work / f"{name}-examples.csv"
    pd.DataFrame({"text": examples[0], "label": [task.labels[i] for i in examples[1]]}).to_csv(example_file)
    start = time.perf_counter()
    made = create_task(
        name, task.dataset.path("train"), task.description, list(task.labels), repo=repo, work_root=work, url=url,
        examples=example_file, on_check=checks.append, progress=False,
    )  # fmt: skip
    create_s = time.perf_counter() - start
    start = time.perf_counter()
    on_test = gold_report(client, name, task.labels, test, checks[0], False)  # the served cascade, on the test rows
    wall = time.perf_counter() - start
    tiers = on_test["cascade_tiers"]
    llm = sum(n for tier, n in tiers.items() if tier.startswith("llm"))
    served = {
        "accuracy": on_test["cascade"],
        "tier_rows": tiers,
        "llm_share": llm / on_test["examples"],
        "rows_per_s": on_test["examples"] / wall,
        "create_s": create_s,
        "teacher_labelling_s": made["teacher_labelling_s"],
        "training_labels": made["training_labels"],
        "gold": made["gold"],
        "calibration": made["calibration"],
        "warnings": made["warnings"],
    }
    return checks[0], served


def _plain_prompt(task) -> dict:
    from cascade_export.distill.prompt_task import task_from_prompt

    spec, _ = task_from_prompt(task.name, task.labels, task.description)
    return next(iter(spec.llm.values())).gate_prompt()


def main(argv: list[str] | None = None) -> int:
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports
    from cascade_client import CascadeClient
    from cascade_export.build.llm_tiers import ensure_llms
    from cascade_export.build.repo_embedder import ensure_embedder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "ag_news", "clinc150"])
    parser.add_argument("--examples", type=int, default=50, help="gold examples per task (%(default)s)")
    parser.add_argument("--test-rows", type=int, default=300, help="test rows per task (%(default)s)")
    parser.add_argument("--cascade", action="store_true", help="create each task with task create and serve it")
    args = parser.parse_args(argv)
    for name in args.tasks:
        load_task(name)  # an unknown task fails here, before a server starts
    start, results = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        ensure_embedder(repo)
        ensure_llms(repo)
        http, grpc, metrics = free_ports(3)
        opts = ServerOptions(
            repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics, model_control_mode="explicit"
        )
        with TritonServer(opts) as server, CascadeClient(server.grpc_url, timeout_s=900) as client:
            for name in args.tasks:
                cascade = {"url": server.grpc_url, "repo": repo, "work": Path(tmp)} if args.cascade else None
                result = bench_task(client, name, args.examples, args.test_rows, cascade)
                check = result["check"]
                print(
                    f"{name}: kept {check['chosen']['form']!r} ({check['accuracy']:.3f} on {check['examples']} "
                    f"examples); test {result['test_rows']} rows: plain {result['teacher_test_plain']:.3f}, "
                    f"kept {result['teacher_test_chosen']:.3f} (target {result['target']})"
                )
                if result["cascade"] is not None:
                    served = result["cascade"]
                    print(f"  cascade: accuracy {served['accuracy']:.3f}, LLM share {served['llm_share']:.1%}, "
                          f"tiers {served['tier_rows']}, trained on {served['training_labels']['chosen']}")  # fmt: skip
                results.append(result)
    payload = {
        "benchmark": "teacher-check",
        "when": now_iso(),
        "command": command_line(),
        "examples": args.examples,
        "test_rows": args.test_rows,
        "cascade": args.cascade,
        "tasks": results,
        "wall_s": time.perf_counter() - start,
    }
    print(f"saved {save_result('teacher-check', payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
