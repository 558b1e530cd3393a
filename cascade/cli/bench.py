"""``cascade loadtest``, ``soak``, ``demo`` and ``bench``: run a task under load or end to end; save the figures.
Heavy modules are imported inside each command (the CLI must start fast)."""

from __future__ import annotations

import sys

from cascade.cli.common import result_command, save_result
from cascade.errors import CascadeError, InvalidInput


def cmd_loadtest(args) -> int:
    from cascade.bench import gate as bench
    from cascade.ops import loadtest
    from cascade.tasks import load_task

    names = list(loadtest.SCENARIOS) if args.scenarios == ["all"] else args.scenarios
    for name in names:
        loadtest.scenario(name)  # an unknown name fails before a server starts
    results = loadtest.run_scenarios(
        names,
        load_task(args.task),
        args.repo,
        args.url,
        args.duration,
        args.users,
        args.budget_scale,
        args.data_dir,
        work=args.results_dir / "work" if args.results_dir else None,
        find_max=args.find_max,
        rows=args.rows,
    )
    loadtest.print_results(results)
    summary = {"benchmark": "loadtest", "task": args.task, "results": results}
    print(f"saved {bench.save(summary, 'loadtest', args.results_dir or bench.RESULTS_DIR)}")
    return 1 if any(r["breaches"] for r in results) else 0


def cmd_soak(args) -> int:
    from cascade.bench import gate as bench
    from cascade.ops.soak import run_soak
    from cascade.tasks import load_task

    if args.duration <= args.warmup:
        raise InvalidInput(f"--duration ({args.duration} s) must be longer than --warmup ({args.warmup} s)")
    report = run_soak(load_task(args.task), args.repo, args.duration, args.warmup, args.growth, args.data_dir)
    a, b = report["after_warmup"], report["end"]
    print(f"requests {report['requests']}, bad requests refused {report['bad_requests_refused']}, "
          f"unexpected errors {report['error_count']}")  # fmt: skip
    for name in ("server_rss_mb", "stub_rss_mb", "stubs", "shm_files", "shm_mb", "server_fds", "server_threads"):
        print(f"  {name:15} after warm-up {a[name]:>9}  end {b[name]:>9}")
    for name, m in report["rss_medians_mb"].items():
        print(f"  {name:15} median of the first fifth {m['first_fifth']:.1f}, of the last fifth {m['last_fifth']:.1f}")
    print(f"saved {bench.save(report, 'soak', args.results_dir or bench.RESULTS_DIR)}")
    for problem in report["problems"]:
        print(f"SOAK FAILED: {problem}")
    return 0 if report["passed"] else 1


def cmd_demo(args) -> int:
    from cascade.cli.demo import demo_result, run_demo
    from cascade.cli.doctor import preflight
    from cascade.tasks import load_task

    preflight(args)  # stops with the doctor's fixes when a quick check fails (--skip-doctor: not); ports: its own
    summary = run_demo(
        load_task(args.task),
        args.repo,
        args.rebuild,
        args.rows,
        args.batch_size,
        args.data_dir,
        teacher=args.teacher,
        sample=args.sample,
        work_root=args.work_dir,
    )
    result = demo_result(summary, result_command(args))
    took = f"demo {result['stages']['total_s'] / 60:.1f} min"
    if result["with_setup_s"] is not None:
        took += f", {result['with_setup_s'] / 60:.1f} min with `make setup` ({result['setup']['seconds'] / 60:.1f})"
    print(took)
    save_result("demo", result, args)
    return 0


def cmd_bench(args) -> int:
    from cascade.bench import gate as bench
    from cascade.cli.demo import task_is_built
    from cascade.tasks import load_task

    if args.which == "threads":  # the GGUFs and SST-2 only: no built task, no server
        from cascade.bench import threads as bench_threads

        command = " ".join(["cascade", *sys.argv[1:]])
        result = bench_threads.run(40 if args.rows is None else args.rows, data_dir=args.data_dir, command=command)
        bench_threads.print_table(result)
        print(f"saved {bench.save(result, 'threads')}")
        return 0
    task = load_task(args.task)
    if not task_is_built(task, args.repo):
        raise CascadeError(
            f"task {task.name} is not built in {args.repo}, or was built from an older definition: "
            "run `cascade build` (or make demo)"
        )
    if args.which == "isolation":
        from cascade.bench import isolation as bench_isolation

        result = bench_isolation.bench_isolation(task.name, args.repo, args.duration, args.llm_clients)
        print(f"saved {bench.save(result, 'isolation')}")
        print("passed" if result["passed"] else "FAILED: " + "; ".join(result["breaches"]))
        return 0 if result["passed"] else 1
    if args.which == "table":
        from cascade.bench import table as bench_table

        rows = 1_000_000 if args.rows is None else args.rows
        result = bench_table.bench_table(task, args.repo, rows, args.text_rows, args.llm_rows, args.data_dir)
        bench_table.print_table(result)
        print(f"saved {bench.save(result, f'table-{task.name}')}")
        return 0
    result = bench.bench_gate(task, args.repo, args.iterations, args.data_dir)
    bench.print_gate(result)
    print(f"saved {bench.save(result, 'gate')}")
    return 0
