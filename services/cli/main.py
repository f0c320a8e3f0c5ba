"""The `maas` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.cli import registry
from services.cli.up import up


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maas", description="Model as a service: run and operate maas.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one service in the foreground until SIGTERM or Ctrl-C")
    run.add_argument("service", choices=sorted(registry.SERVICES))
    run.add_argument("--host", help="address to bind (default: the service's setting, 127.0.0.1)")
    run.add_argument("--port", type=int, help="gRPC port (default: the service's setting; 0 picks one)")

    start = commands.add_parser("up", help="start every service on this machine; Ctrl-C drains and stops them")
    start.add_argument("--grace", type=float, default=15.0, help="seconds each service gets to drain on stop")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `maas` command line.

    Args:
        argv: arguments without the program name; default `sys.argv[1:]`.

    Returns:
        The process exit status.
    """
    args = _parser().parse_args(argv)
    if args.command == "run":
        overrides = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
        asyncio.run(registry.run_service(args.service, overrides))
        return 0
    return asyncio.run(up(registry.up_groups(), grace=args.grace))


if __name__ == "__main__":
    sys.exit(main())
