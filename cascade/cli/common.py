"""What the ``cascade`` commands that write a result file (``build``, ``demo``) share."""

from __future__ import annotations

import sys


def result_command(args) -> str:
    """The command line a result file records."""
    from cascade.results import command_line

    return command_line(getattr(args, "argv", None))


def save_result(name: str, payload: dict, args) -> None:
    """Print where ``payload`` went; a results folder that cannot be written (a read-only checkout) only warns."""
    from cascade.results import save_result as write_result

    if args.no_save:
        return
    try:
        print(f"saved {write_result(name, payload, args.results_dir)}")
    except OSError as exc:
        print(f"cascade {args.command}: warning: results not saved: {exc}", file=sys.stderr)
