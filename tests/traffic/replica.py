"""A backend replica for traffic tests: the runtime serving the `echo` model under another name and
with chosen versions, so the gateway can route it (the gateway serves `echo` itself) and a response's
`model_version` tells which backend answered.

Run as a process: `python -m tests.traffic.replica --name pool --versions 1,2 --port 0`; it prints
`READY replica 127.0.0.1:<port>`.
"""

from __future__ import annotations

import argparse
import asyncio

from services.common.echo import echo_model
from services.common.repository import VersionPolicy
from services.common.server import GrpcServer, serve
from services.common.settings import EchoSettings
from services.common.versions import ModelRegistry, ModelVersions


def replica_echo(name: str, versions: list[str]) -> ModelVersions:
    """`echo` under `name`, serving every one of `versions`."""
    return echo_model(name, versions, VersionPolicy.parse("all"))


def replica(name: str, versions: list[str], port: int = 0, drain_grace_seconds: float = 2.0) -> GrpcServer:
    """A server on loopback serving `replica_echo(name, versions)`."""
    settings = EchoSettings(port=port, metrics_port=0, drain_grace_seconds=drain_grace_seconds)
    return GrpcServer("replica", settings, ModelRegistry([replica_echo(name, versions)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--versions", default="1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(replica(args.name, args.versions.split(","), args.port)))


if __name__ == "__main__":
    main()
