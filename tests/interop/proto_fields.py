"""Dump every message's fields, every enum's values and every RPC of the `inference` protos (a
service's file and the files it imports) as JSON; run as a separate process.

Usage: python proto_fields.py tritonclient|maas
"""

from __future__ import annotations

import json
import sys


def _type_of(field) -> str:
    if field.message_type:
        return field.message_type.full_name
    return field.enum_type.full_name if field.enum_type else ""


def fields(descriptor) -> dict:
    table = {}

    def enum(values) -> None:
        table[f"enum {values.full_name}"] = {value.name: [value.number] for value in values.values}

    def walk(message) -> None:
        table[message.full_name] = {
            f.name: [
                f.number,
                f.type,
                f.is_repeated,
                _type_of(f),
                f.containing_oneof.name if f.containing_oneof else "",
            ]
            for f in message.fields
        }
        for nested in message.nested_types:
            walk(nested)
        for values in message.enum_types:
            enum(values)

    for file in (descriptor, *descriptor.dependencies):
        for message in file.message_types_by_name.values():
            walk(message)
        for values in file.enum_types_by_name.values():
            enum(values)
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
