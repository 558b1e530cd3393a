"""``cascade build``, ``label``, ``train``, ``calibrate``, ``export`` and ``task create``: a task from data to
the model repository. Heavy modules are imported inside each command (the CLI must start fast)."""

from __future__ import annotations

import json
from pathlib import Path

from cascade import contract
from cascade.cli.arguments import llm_endpoints, report_prices
from cascade.cli.common import result_command, save_result
from cascade.errors import ConfigError, InvalidInput


def _build_options(args):
    """``cascade build`` and ``cascade train`` take the same training options."""
    from cascade_export.build.stage import BuildOptions

    target = getattr(args, "target", None)
    if target is not None and not 0 < target <= 1:  # before the training, not after it
        raise InvalidInput(f"--target {target}: the agreement to guarantee must be in (0, 1], e.g. --target 0.95")
    return BuildOptions(
        train_rows=args.train_rows,
        calib_rows=args.calib_rows,
        encoder_epochs=args.encoder_epochs,
        seed=args.seed,
        data_dir=args.data_dir,
        labels_file=str(args.labels) if args.labels else None,
        calib_fraction=args.calib_fraction,
        embedder=args.embedder,
        soft_labels=args.soft_labels,
        target=target,
    )


def _example_columns(args) -> tuple[str, str]:
    """``--example-columns``: the examples' text and label columns."""
    columns = tuple(x.strip() for x in args.example_columns.split(","))
    if len(columns) != 2:
        raise ConfigError(f"--example-columns takes two names, text,label, not {args.example_columns!r}")
    return columns


def _examples(args, labels):
    """``--examples`` read with ``--example-columns`` (None without them)."""
    from cascade_export.distill.examples import read_examples

    return None if args.examples is None else read_examples(args.examples, labels, *_example_columns(args))


def cmd_build(args) -> int:
    from cascade.tasks import load_task
    from cascade_export.build.commands import build_result, build_task
    from cascade_export.distill.examples import weigh_examples

    options = _build_options(args)
    task = load_task(args.task)
    set_llms(args)
    gold = _examples(args, task.labels)
    if gold is not None:
        if not args.labels:
            raise ConfigError("--examples join the teacher's labels: give --labels (cascade label's labelled.csv)")
        print_training(weigh_examples(args.repo, Path(args.labels), gold, args.seed))
    report = build_task(task, args.repo, options)
    save_result(f"build-{task.name}", build_result(task, args.repo, report, result_command(args)), args)
    return 0


def set_llms(args) -> None:
    """``--llm-large openai:MODEL@URL`` and ``--llm-price``: each endpoint probed (a refused key or a wrong URL stops
    here, before any training), then written into the repository's LLM models."""
    from cascade.llm.remote import RemoteScorer
    from cascade_export.build.llm_tiers import ensure_llms

    endpoints, prices = llm_endpoints(args)
    for tier, endpoint in endpoints.items():
        scorer = RemoteScorer(endpoint)
        try:
            print(f"[build] {contract.TIER_NAMES[tier]}: {scorer.probe()}", flush=True)
        finally:
            scorer.close()
    if endpoints or prices:
        ensure_llms(Path(args.repo), endpoints, prices)


def cmd_label(args) -> int:
    from cascade.tasks import load_task
    from cascade_export.distill.commands import run_label

    task = load_task(args.task)
    summary = run_label(
        task,
        args.work_dir,
        args.table,
        text_column=args.column,
        id_column=args.id_column,
        budget=args.budget,
        seed=args.seed,
        teacher=args.teacher,
        url=args.url,
        data_dir=args.data_dir,
        strategy=args.strategy,
        repo=args.repo,
        examples=_examples(args, task.labels),
        min_teacher_accuracy=args.min_teacher_accuracy,
        teacher_options={"key_env": args.api_key_env, "concurrency": args.llm_concurrency},
    )
    if summary["teacher_check"] is not None:
        from cascade_export.distill.teacher_check import confusion_text

        check = summary["teacher_check"]
        low, high = check["interval"]
        print(f"the teacher on your {check['examples']} examples: {check['accuracy']:.3f} ({check['confidence']:.0%} "
              f"interval {low:.3f}-{high:.3f}); {confusion_text(check['confusion'])}")  # fmt: skip
    if summary["teacher_usage"] is not None:
        usage = summary["teacher_usage"]
        print(
            f"the endpoint counted {usage['prompt_tokens']:,} prompt and {usage['completion_tokens']:,} completion "
            f"tokens in {usage['requests']:,} calls ({usage['retries']} tried again)"
        )
    rate = summary["teacher_rows_per_s"]
    print(
        f"{summary['sample']} rows labelled by {summary['teacher']}: {summary['labelled_rows']} new, "
        f"{summary['cached_rows']} from the cache; teacher {summary['teacher_s']:.1f} s"
        + (f" ({rate:.1f} rows/s)" if rate else "")
    )
    if summary["strategy"] == "active":
        print(f"sample: {summary['uniform_rows']} uniform (calibrate), {summary['active_rows']} active (train only)")
    print(f"labels: {summary['label_counts']} -> {args.work_dir / summary['task'] / 'labelled.csv'}")
    return 0


def _stage(args) -> Path:
    from cascade.tasks import load_task

    return args.work_dir / load_task(args.task).name / "stage"


def cmd_train(args) -> int:
    from cascade.tasks import load_task
    from cascade_export.build.train import train_task

    options = _build_options(args)
    state = train_task(load_task(args.task), args.repo, _stage(args), options)
    print(
        f"trained on {state['train_rows']} rows ({state['reference']}); "
        f"{state['calib_rows']} held out -> {_stage(args)}"
    )
    return 0


def cmd_calibrate(args) -> int:
    from cascade.tasks import load_task
    from cascade_export.build.calibration import calibrate_task

    calibrate_task(
        load_task(args.task),
        args.repo,
        _stage(args),
        args.target,
        args.delta,
        keep_all_tiers=args.keep_all_tiers,
        budget_ms=args.budget_ms,
    )
    print(f"wrote {_stage(args) / 'calibration.json'} and calibration.png; next: cascade export")
    return 0


def cmd_export(args) -> int:
    from cascade.tasks import load_task
    from cascade_export.build.commands import export_task

    task = load_task(args.task)
    export_task(task, args.repo, _stage(args))
    if args.profile == "gpu":
        from cascade.repository.gpu_profile import write_gpu_repository

        target = args.gpu_repo or Path(args.repo).parent / "gpu"
        names = write_gpu_repository(args.repo, target, [task.name], args.trtllm_engine, args.trtllm_tokenizer)
        print(f"GPU profile of {task.name} written to {target}: {', '.join(names)} (unverified on a GPU)")
    return 0


def cmd_task(args) -> int:
    from cascade_export.distill.commands import create_task

    labels, descriptions = label_words(args.labels)
    columns = _example_columns(args)
    result = create_task(
        args.name,
        args.table,
        args.prompt,
        labels,
        repo=args.repo,
        work_root=args.work_dir,
        url=args.url,
        text_column=args.column,
        id_column=args.id_column,
        budget=args.budget,
        strategy=args.strategy,
        seed=args.seed,
        tiers=[x.strip() for x in args.tiers.split(",") if x.strip()],
        target=args.target,
        delta=args.delta,
        encoder_epochs=args.encoder_epochs,
        examples=args.examples,
        example_columns=columns,
        descriptions=descriptions,
        min_teacher_accuracy=args.min_teacher_accuracy,
        on_check=print_teacher_check,
        confirm=_confirm(args, labels),
        metrics_url=args.metrics_url,
        llm_prices=report_prices(args),
    )
    if result["teacher_check"] is None:
        print(
            "warning: the teacher was not checked on this task: give --examples (a few labelled rows), or run on a "
            "terminal without --yes to confirm its first labels"
        )
    else:
        gold = result["gold"]
        print_training(result["training_labels"])
        trained = " and trained the cheap tiers" if gold["examples_trained"] else ""
        print(
            f"on your {gold['examples']} examples (they chose the prompt form{trained}: not held out): cascade "
            f"{gold['cascade']:.3f} (tiers {gold['cascade_tiers']}), teacher {gold['teacher']:.3f}"
        )
    for warning in result["warnings"]:
        print(f"warning: {warning}")
    enabled = json.loads(result["gate"][contract.CFG_TIERS])
    print(
        f"task {result['task']} is served: tiers {enabled}; teacher labelling "
        f"{result['teacher_labelling_s']:.1f} s, train + calibrate + export + load "
        f"{result['train_calibrate_export_load_s']:.1f} s (definition: {result['task_file']})"
    )
    cost = result["cost"]
    if "note" not in cost:
        priced = f", cost {cost['cost']:,.4f}" if cost["cost"] else " (no price set: --llm-price at build)"
        print(
            f"cost of making it: the LLM tiers read {cost['tokens_in']:,.0f} tokens and wrote "
            f"{cost['tokens_out']:,.0f}" + (f", {cost['cpu_s']:,.1f} CPU-s" if cost["cpu_s"] else "") + priced
        )
    return 0


def _confirm(args, labels: list[str]):
    """The terminal prompt that confirms the teacher's first labels, where task create has no examples, runs on a
    terminal and was not given --yes (None otherwise: it only warns)."""
    import sys

    if args.examples is not None or args.yes or not sys.stdin.isatty():
        return None
    from cascade.cli.confirm import confirm_rows

    return lambda texts, predicted: confirm_rows(texts, predicted, labels)


def print_training(training: dict) -> None:
    """Which labels the cheap tiers train on, and tier 0's cross-validated accuracy on the examples for each."""
    from cascade_export.distill.examples import TEACHER

    sources = ", ".join(f"{source} {acc:.3f}" for source, acc in training["accuracy"].items())
    weighted = training["chosen"] != TEACHER
    print(
        f"tier 0 on your examples (cross-validated), trained on: {sources}; the cheap tiers train on "
        f"{training['chosen']}" + (f" (each example counts {training['gold_weight']}x)" if weighted else "")
    )


def label_words(value: str) -> tuple[list[str], list[str] | None]:
    """``--labels``: names, or name=description pairs (the descriptions, one per label, or None)."""
    items = [x.strip() for x in value.split(",") if x.strip()]
    if not any("=" in x for x in items):
        return items, None
    pairs = [x.split("=", 1) if "=" in x else (x, x) for x in items]
    return [n.strip() for n, _ in pairs], [d.strip() or n.strip() for n, d in pairs]


def print_teacher_check(check: dict) -> None:
    """The teacher check: each form's accuracy on the examples, the one kept, its interval and confusion."""
    from rich.console import Console
    from rich.table import Table

    from cascade_export.distill.teacher_check import confusion_text

    table = Table(title=f"the teacher on {check['examples']} examples (majority {check['majority_rate']:.0%})")
    table.add_column("prompt form")
    table.add_column("accuracy", justify="right")
    for form in check["forms"]:
        mark = " (kept)" if form["form"] == check["chosen"]["form"] else ""
        table.add_row(form["form"] + mark, f"{form['accuracy']:.3f}")
    console = Console()
    console.print(table)
    low, high = check["interval"]
    console.print(
        f"kept: {check['chosen']['form']}: accuracy {check['accuracy']:.3f} ({check['confidence']:.0%} interval "
        f"{low:.3f}-{high:.3f}); {confusion_text(check['confusion'])}"
    )
    if check.get("examples_alone") is not None:
        console.print(f"tier 0 trained on the examples alone: {check['examples_alone']:.3f} (cross-validated)")
