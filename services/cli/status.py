"""`maas status`: what a deployment runs — every model version, its state, device and load, and the
process serving it — as the gateway (or any one service) answers `maas.common.v1.StatusService`."""

from __future__ import annotations

import argparse
import json
import sys

import grpc
from google.protobuf import json_format

from maas.common.v1 import common_pb2 as pb
from maas.common.v1 import common_pb2_grpc as pb_grpc
from services.cli import connection
from services.cli.table import format_table
from services.common.tls import TlsFilesError, secure_channel


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `maas status` to the command line."""
    status = commands.add_parser("status", help="every model version running: state, device, load, process")
    status.add_argument("--address", help="gateway (or service) address (default: MAAS_GATEWAY_HOST:MAAS_GATEWAY_PORT)")
    status.add_argument("--timeout", type=float, default=15.0, help="deadline of the call, in seconds")
    status.add_argument("--json", action="store_true", help="print the answer as JSON")
    connection.add_options(status)


def render(response: pb.StatusResponse) -> str:
    """The answer as two tables: the versions, then the processes serving them."""
    servers = {server.id: server for server in response.servers}

    def where(server_id: str) -> str:
        server = servers.get(server_id)
        return f"{server.service} {server.address or server.id}" if server else "-"

    versions = [
        (
            v.model,
            v.version or "-",
            v.state,
            v.device or "-",
            v.queue_depth,
            v.in_flight,
            v.inference_count,
            v.execution_count,
            where(v.server) if v.server else v.reason,
        )
        for v in sorted(response.versions, key=lambda v: (v.model, v.version.zfill(8), v.server))
    ]
    processes = [
        (
            s.service,
            s.id,
            s.address or "-",
            s.hosting,
            "yes" if s.ready else "no",
            s.calls_in_flight,
            f"{s.uptime_seconds:.0f}s",
            s.version,
        )
        for s in response.servers
    ]
    return "\n\n".join(
        [
            format_table(
                ("MODEL", "VERSION", "STATE", "DEVICE", "QUEUED", "IN FLIGHT", "INFERENCES", "EXECUTIONS", "SERVED BY"),
                versions,
            ),
            format_table(("SERVICE", "PROCESS", "ADDRESS", "HOSTING", "READY", "CALLS", "UP", "VERSION"), processes),
        ]
    )


def run(args: argparse.Namespace) -> int:
    """Ask for the status and print it.

    Returns:
        0; 1 if the call failed (the status is printed).
    """
    address = connection.gateway_address(args)
    try:
        with secure_channel(address, connection.client_tls(args)) as channel:
            stub = pb_grpc.StatusServiceStub(channel)
            response = stub.Status(pb.StatusRequest(), timeout=args.timeout, metadata=connection.metadata(args))
    except (OSError, TlsFilesError) as exc:
        sys.stderr.write(f"maas status: {exc}\n")
        return 1
    except grpc.RpcError as exc:
        sys.stderr.write(f"maas status: {address}: {exc.code().name}: {exc.details()}\n")
        return 1
    if args.json:
        document = json_format.MessageToDict(
            response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(render(response) + "\n")
    return 0
