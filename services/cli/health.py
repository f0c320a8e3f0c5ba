"""`maas health`: check services over grpc.health.v1, as the chart's `helm test` pod does."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `maas health ADDRESS...` to the command line."""
    health = commands.add_parser("health", help="check that services answer SERVING (grpc.health.v1)")
    health.add_argument("addresses", nargs="+", help="host:port of each service")
    health.add_argument("--service", default="", help="health service name to ask for (default: the server)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds each check may take")


def check(address: str, service: str, timeout: float) -> str:
    """The serving status one server reports, or the gRPC status code that stopped the check."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def run(args: argparse.Namespace) -> int:
    """Check every address; print one `<status> <address>` line each.

    Returns:
        0 when every one is SERVING, else 1.
    """
    statuses = [check(address, args.service, args.timeout) for address in args.addresses]
    for address, status in zip(args.addresses, statuses, strict=True):
        sys.stdout.write(f"{status} {address}\n")
    return 0 if all(status == "SERVING" for status in statuses) else 1
