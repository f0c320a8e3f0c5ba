"""`maas health`: check services over grpc.health.v1, as the chart's `helm test` pod does."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maas.inference import grpc_service_pb2, grpc_service_pb2_grpc


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `maas health ADDRESS...` to the command line."""
    health = commands.add_parser("health", help="check that services answer SERVING (grpc.health.v1)")
    health.add_argument("addresses", nargs="+", help="host:port of each service")
    health.add_argument("--service", default="", help="health service name to ask for (default: the server)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds each check may take")
    health.add_argument(
        "--model", action="append", default=[], help="a v2 model that must be READY at the first address (repeatable)"
    )


def check(address: str, service: str, timeout: float) -> str:
    """The serving status one server reports, or the gRPC status code that stopped the check."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def model_ready(address: str, model: str, timeout: float) -> str:
    """`READY` or `NOT_READY` as v2 ModelReady at `address` answers for `model`, or the status code that stopped it."""
    with grpc.insecure_channel(address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            response = stub.ModelReady(grpc_service_pb2.ModelReadyRequest(name=model), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name
    return "READY" if response.ready else "NOT_READY"


def run(args: argparse.Namespace) -> int:
    """Check every address, then every `--model` at the first address; print one line per check.

    Returns:
        0 when every address is SERVING and every model READY, else 1.
    """
    results = [(check(address, args.service, args.timeout), address) for address in args.addresses]
    healthy = all(status == "SERVING" for status, _ in results)
    for model in args.model:
        results.append((model_ready(args.addresses[0], model, args.timeout), f"{model}@{args.addresses[0]}"))
    for status, what in results:
        sys.stdout.write(f"{status} {what}\n")
    return 0 if healthy and all(status == "READY" for status, _ in results[len(args.addresses) :]) else 1
