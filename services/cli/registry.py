"""The services `maas run` can start, and the order `maas up` starts them in, read from the catalog.

A service's model classes are imported when it is built, so that starting one service never imports
another's dependencies (the tokenizer and gateway images carry no torch).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from itertools import groupby
from pathlib import Path
from typing import Any

from services.catalog import SERVICES, model_services
from services.common.echo import echo_model
from services.common.server import GrpcServer, build_server, serve
from services.common.settings import EchoSettings
from services.common.spec import ServiceSpec
from services.common.versions import ModelRegistry
from services.gateway.spec import GatewaySettings

ECHO_SERVER = "echo-server"
RUNNABLE = [ECHO_SERVER, *SERVICES]
ROUTING_FILE = "routing.yaml"


async def run_service(name: str, overrides: dict[str, Any]) -> None:
    """Build service `name` from its settings (env, then `overrides`) and serve until signalled.

    Raises:
        SystemExit: the service's configuration is unusable (the message is written to stderr).
    """
    if name == ECHO_SERVER:
        await serve(GrpcServer(ECHO_SERVER, EchoSettings(**overrides), ModelRegistry([echo_model()])))
        return
    await run_spec(SERVICES[name], overrides)


async def run_spec(spec: ServiceSpec, overrides: dict[str, Any]) -> None:
    """Build a service from its spec and settings (env, then `overrides`) and serve until signalled.

    Raises:
        SystemExit: the service's configuration is unusable (the message is written to stderr).
    """
    from pydantic import ValidationError

    from services.common.auth import KeysFileError
    from services.common.devices import DeviceError
    from services.common.errors import MaasError
    from services.gateway.routing import RoutingError

    try:
        server = build_server(spec, spec.read_settings(**overrides))
    except (RoutingError, KeysFileError, DeviceError, ValidationError, MaasError, ImportError, ValueError) as exc:
        sys.stderr.write(f"{spec.name}: {exc}\n")
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
            services on a local Ray Serve, then the others: the gateway).
    """
    if runtime == "ray":
        hosted = {spec.name for spec in model_services()}
        return [["ray"], [name for name in SERVICES if name not in hosted]]
    ordered = sorted(SERVICES.values(), key=lambda spec: spec.group)
    return [[spec.name for spec in group] for _, group in groupby(ordered, key=lambda spec: spec.group)]
