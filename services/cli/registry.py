"""The services `maas run` can start, and the order `maas up` starts them in.

Each builder imports its service when called, so that starting one service never imports another's
dependencies (the tokenizer and gateway images carry no torch).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.common.echo import EchoModel
from services.common.models import ModelRegistry
from services.common.server import GrpcServer, serve
from services.common.settings import (
    EchoSettings,
    GatewaySettings,
    TextSettings,
    TokenizerSettings,
    TransformerSettings,
    VisionSettings,
)


def _echo_server(overrides: dict[str, Any]) -> GrpcServer:
    return GrpcServer("echo-server", EchoSettings(**overrides), ModelRegistry([EchoModel()]))


def _tokenizer(overrides: dict[str, Any]) -> GrpcServer:
    from services.tokenizer.hosting import build_server

    return build_server(TokenizerSettings(**overrides))


def _vision(overrides: dict[str, Any]) -> GrpcServer:
    from services.vision.hosting import build_server

    return build_server(VisionSettings(**overrides))


def _text(overrides: dict[str, Any]) -> GrpcServer:
    from services.text.hosting import build_server

    return build_server(TextSettings(**overrides))


def _transformer(overrides: dict[str, Any]) -> GrpcServer:
    from services.transformer.hosting import build_server

    return build_server(TransformerSettings(**overrides))


def _gateway(overrides: dict[str, Any]) -> GrpcServer:
    from services.gateway.hosting import build_server

    return build_server(GatewaySettings(**overrides))


SERVICES: dict[str, Callable[[dict[str, Any]], GrpcServer]] = {
    "echo-server": _echo_server,
    "gateway": _gateway,
    "tokenizer": _tokenizer,
    "vision": _vision,
    "text": _text,
    "transformer": _transformer,
}

UP_GROUPS = [["tokenizer"], ["vision", "text", "transformer"], ["gateway"]]
ROUTING_FILE = "routing.yaml"


async def run_service(name: str, overrides: dict[str, Any]) -> None:
    """Build service `name` from its settings (env, then `overrides`) and serve until signalled.

    Raises:
        SystemExit: the service's configuration is unusable (the message is written to stderr).
    """
    from pydantic import ValidationError

    from services.common.auth import KeysFileError
    from services.common.devices import DeviceError
    from services.gateway.routing import RoutingError

    try:
        server = SERVICES[name](overrides)
    except (RoutingError, KeysFileError, DeviceError, ValidationError) as exc:
        sys.stderr.write(f"{name}: {exc}\n")
        raise SystemExit(1) from None
    await serve(server)


def up_environment(workdir: Path) -> Callable[[str, dict[str, str]], dict[str, str]]:
    """The extra environment `maas up` gives each service: the gateway gets a routing file that
    points the configured targets at the services `maas up` started (written into `workdir`).

    Raises:
        RoutingError: the configured routing file cannot be used.
    """
    from services.gateway.routing import load_routing

    routing = load_routing(GatewaySettings().routing_file)

    def environment(service: str, ready: dict[str, str]) -> dict[str, str]:
        if service != "gateway":
            return {}
        path = workdir / ROUTING_FILE
        path.write_text(routing.with_addresses(ready).to_yaml(), encoding="utf-8")
        return {"MAAS_GATEWAY_ROUTING_FILE": str(path)}

    return environment


def up_groups(runtime: str = "grpc") -> list[list[str]]:
    """Services `maas up` starts, in groups: each group is ready before the next one starts.

    Args:
        runtime: `grpc` (one process per service) or `ray` (one `maas run ray` process hosting the model
            services on a local Ray Serve, then the gateway).
    """
    if runtime == "ray":
        return [["ray"], ["gateway"]]
    return UP_GROUPS
