"""The options several ``cascade`` commands share: where the repository, the task and its files are, how many rows
the teacher labels, the user's examples, and the table engines' servers."""

from __future__ import annotations

import argparse
from pathlib import Path

from cascade import contract
from cascade.paths import DEFAULT_DATA_DIR, DEFAULT_REPO, RUNS_DIR
from cascade_export.distill.commands import DEFAULT_BUDGET, STRATEGIES


def add_repo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="model repository (default: %(default)s)")


def add_task(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="sst2", help="task name (tasks/NAME.toml) or a task TOML file")
    parser.add_argument(
        "--data-dir", default=None, help=f"datasets folder (default: $CASCADE_DATA_DIR or {DEFAULT_DATA_DIR})"
    )


def add_work(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--work-dir", type=Path, default=RUNS_DIR, help="distillation files, per task (default: %(default)s)"
    )


def add_results(parser: argparse.ArgumentParser) -> None:
    """``cascade build`` and ``cascade demo``: where their figures go (cascade.results)."""
    parser.add_argument("--results-dir", type=Path, default=None, help="where the JSON goes (default: bench/results)")
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON")


def add_sampling(parser: argparse.ArgumentParser) -> None:
    """``cascade label`` and ``cascade task create``: how many rows the teacher labels, and which."""
    parser.add_argument(
        "--budget", "--sample", dest="budget", type=int, default=DEFAULT_BUDGET,
        help="rows the teacher labels (--sample: the former name; default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--strategy", choices=STRATEGIES, default="uniform",
        help="uniform sample, or active: a uniform seed (half, >= 200 rows), then the rows tier 0 is least sure of",
    )  # fmt: skip


def positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {n}")
    return n


def add_engine(parser: argparse.ArgumentParser) -> None:
    """``filter`` and ``embed``: the server(s), and where the chunks are processed (docs/tables.md, the Ray engine)."""
    parser.add_argument(
        "--url", default=f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}",
        help="gRPC endpoint of the server; --engine ray: one or more, comma-separated (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--engine", choices=("local", "ray"), default="local",
        help="local: this process, one server; ray: Ray workers over every --url (the 'ray' extra; default: local)",
    )  # fmt: skip
    parser.add_argument(
        "--address", default=None, help="--engine ray: the Ray cluster to join (auto, ray://HOST:10001); default: a "
        "local Ray",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=positive, default=None,
        help="--engine ray: workers, each sending to one --url (round-robin; default: 2 per --url)",
    )  # fmt: skip


def add_embedder(p) -> None:
    from cascade import embedders

    p.add_argument(
        "--hard-labels",
        dest="soft_labels",
        action="store_false",
        help="with --labels: learn from the teacher's argmax only, not its probabilities (prob_* columns)",
    )

    p.add_argument(
        "--embedder",
        choices=list(embedders.EMBEDDERS),
        default=None,
        help=f"a new repository's embedder, shared by all its tasks (default: the repository's, else "
        f"{embedders.DEFAULT_EMBEDDER}; docs/embedders.md)",
    )


def add_examples(parser: argparse.ArgumentParser, what: str) -> None:
    """``task create``, ``label`` and ``build``: the user's labelled examples, and ``what`` they do there."""
    parser.add_argument("--examples", type=Path, default=None, help=f"a few labelled rows of the task (CSV or "
                        f"Parquet, 20-200): {what}")  # fmt: skip
    parser.add_argument("--example-columns", default="text,label", help="text,label columns of --examples")


def add_llm_endpoints(parser: argparse.ArgumentParser) -> None:
    """Where the LLM tiers run and what they cost (``cascade build``): written into the repository once."""
    import os

    for tier in contract.LLM_TIERS:
        name = contract.TIER_NAMES[tier]
        env = f"CASCADE_{name.upper()}"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            default=os.environ.get(env),
            metavar="openai:MODEL@URL",
            help=f"score {name} on an OpenAI-compatible endpoint (${env}); the key from $OPENAI_API_KEY "
            "or --api-key-env, never a file",
        )
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="the variable holding the endpoint's key")
    parser.add_argument("--llm-concurrency", type=int, default=4, help="requests in flight to an endpoint at most")
    _add_price(parser, "written into the repository: the served tier counts its cost")


def add_cost(parser: argparse.ArgumentParser) -> None:
    """Where the server's counters are and how to price them (the cost report of filter, eval, task create)."""
    parser.add_argument(
        "--metrics-url", default=None, help="the server's /metrics, for the cost report (default: beside --url on "
        "Triton's ports)",
    )  # fmt: skip
    _add_price(parser, "prices this report, in place of the served tiers' own prices")


def _add_price(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--llm-price",
        action="append",
        default=[],
        metavar="TIER=PRICE",
        help="a tier's price: llm_large=0.6/2.4 (per million tokens in/out) or llm_large=cpu:0.05 (per CPU-hour); "
        + what,
    )


def llm_prices(args) -> dict[int, object]:
    """``--llm-price TIER=PRICE`` (repeated) by tier (ConfigError naming a bad one)."""
    from cascade.errors import ConfigError
    from cascade.llm.meter import Price

    prices = {}
    for item in args.llm_price:
        name, _, price = item.partition("=")
        if name not in (contract.TIER_NAMES[t] for t in contract.LLM_TIERS) or not price:
            raise ConfigError(f"--llm-price {item!r}: write llm_small=PRICE or llm_large=PRICE")
        prices[contract.TIER_BY_NAME[name]] = Price.parse(price)
    return prices


def report_prices(args) -> dict | None:
    """``--llm-price`` by model name, as the cost report takes them (None: the served tiers' own)."""
    return {contract.TIER_NAMES[t]: p for t, p in llm_prices(args).items()} or None


def llm_endpoints(args) -> tuple[dict, dict]:
    """``--llm-small``/``--llm-large`` and ``--llm-price`` as the tiers' endpoints and prices (ConfigError naming a
    bad one)."""
    from cascade.llm.openai_http import Endpoint

    endpoints = {}
    for tier in contract.LLM_TIERS:
        spec = getattr(args, contract.TIER_NAMES[tier])
        if spec:
            endpoints[tier] = Endpoint.parse(spec, key_env=args.api_key_env, concurrency=args.llm_concurrency)
    return endpoints, llm_prices(args)
