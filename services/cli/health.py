"""`maas health`: check services over grpc.health.v1, as the chart's `helm test` pod does."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maas.inference import grpc_service_pb2, grpc_service_pb2_grpc
from services.cli import connection
from services.common.tls import ClientTls, TlsFilesError, secure_channel


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `maas health ADDRESS...` to the command line."""
    health = commands.add_parser("health", help="check that services answer SERVING (grpc.health.v1)")
    health.add_argument("addresses", nargs="+", help="host:port of each service")
    health.add_argument("--service", default="", help="health service name to ask for (default: the server)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds each check may take")
    health.add_argument(
        "--model", action="append", default=[], help="a v2 model that must be READY at the first address (repeatable)"
    )
    connection.add_options(health)


def check(address: str, service: str, timeout: float, tls: ClientTls | None = None) -> str:
    """The serving status one server reports, or the gRPC status code that stopped the check."""
    with secure_channel(address, tls or ClientTls()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def model_ready(
    address: str, model: str, timeout: float, tls: ClientTls | None = None, metadata: tuple[tuple[str, str], ...] = ()
) -> str:
    """`READY` or `NOT_READY` as v2 ModelReady at `address` answers for `model`, or the status code that stopped it."""
    with secure_channel(address, tls or ClientTls()) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            response = stub.ModelReady(
                grpc_service_pb2.ModelReadyRequest(name=model), timeout=timeout, metadata=metadata
            )
        except grpc.RpcError as exc:
            return exc.code().name
    return "READY" if response.ready else "NOT_READY"


def run(args: argparse.Namespace) -> int:
    """Check every address, then every `--model` at the first address; print one line per check.

    Returns:
        0 when every address is SERVING and every model READY, else 1.
    """
    tls = connection.client_tls(args)
    try:
        results = [(check(address, args.service, args.timeout, tls), address) for address in args.addresses]
        healthy = all(status == "SERVING" for status, _ in results)
        for model in args.model:
            ready = model_ready(args.addresses[0], model, args.timeout, tls, connection.metadata(args))
            results.append((ready, f"{model}@{args.addresses[0]}"))
    except TlsFilesError as exc:
        sys.stderr.write(f"maas health: {exc}\n")
        return 1
    for status, what in results:
        sys.stdout.write(f"{status} {what}\n")
    return 0 if healthy and all(status == "READY" for status, _ in results[len(args.addresses) :]) else 1
