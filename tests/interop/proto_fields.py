"""Dump every message's fields of an `inference` descriptor as JSON; run as a separate process.

Usage: python proto_fields.py tritonclient|maas
"""

from __future__ import annotations

import json
import sys


def fields(descriptor) -> dict:
    table = {}

    def walk(message) -> None:
        table[message.full_name] = {
            f.name: [f.number, f.type, f.message_type.full_name if f.message_type else ""] for f in message.fields
        }
        for nested in message.nested_types:
            walk(nested)

    for message in descriptor.message_types_by_name.values():
        walk(message)
    for service in descriptor.services_by_name.values():
        for method in service.methods:
            table[f"rpc {service.full_name}.{method.name}"] = {
                "io": [
                    method.input_type.full_name,
                    method.output_type.full_name,
                    method.client_streaming,
                    method.server_streaming,
                ]
            }
    return table


def main(which: str) -> int:
    if which == "tritonclient":
        from tritonclient.grpc import service_pb2 as module
    else:
        from maas.inference import grpc_service_pb2 as module
    print(json.dumps(fields(module.DESCRIPTOR)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
