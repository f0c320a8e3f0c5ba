"""The services `maas run` can start, and the order `maas up` starts them in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.common.echo import EchoModel
from services.common.models import ModelRegistry
from services.common.server import GrpcServer, serve
from services.common.settings import EchoSettings, TokenizerSettings
from services.tokenizer.hosting import build_server as build_tokenizer


def _echo_server(overrides: dict[str, Any]) -> GrpcServer:
    return GrpcServer("echo-server", EchoSettings(**overrides), ModelRegistry([EchoModel()]))


SERVICES: dict[str, Callable[[dict[str, Any]], GrpcServer]] = {
    "echo-server": _echo_server,
    "tokenizer": lambda overrides: build_tokenizer(TokenizerSettings(**overrides)),
}

UP_GROUPS = [["tokenizer"]]


async def run_service(name: str, overrides: dict[str, Any]) -> None:
    """Build service `name` from its settings (env, then `overrides`) and serve until signalled."""
    await serve(SERVICES[name](overrides))


def up_groups() -> list[list[str]]:
    """Services `maas up` starts, in groups: each group is ready before the next one starts."""
    return UP_GROUPS
