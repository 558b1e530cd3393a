"""``cascade serve``: the quick checks of ``cascade doctor``, then a supervised tritonserver over a repository."""

from __future__ import annotations

import os

from cascade import contract


def cmd_serve(args) -> int:
    from cascade.cli.doctor import preflight
    from cascade.server.launcher import serve

    ports = [("--http-port", args.http_port), ("--grpc-port", args.grpc_port), ("--metrics-port", args.metrics_port)]
    preflight(args, ports, args.host)  # stops with the doctor's fixes when a quick check fails (--skip-doctor: not)
    return serve(server_options(args))


def server_options(args):
    """The server ``cascade serve`` starts for these arguments."""
    from cascade.server.launcher import ServerOptions

    return ServerOptions(
        repository=args.repo,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_control_mode=args.model_control_mode,
        log_verbose=args.log_verbose,
        admin_key=os.environ.get(contract.ADMIN_KEY_ENV) or None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        llm_threads=args.llm_threads,
    )
