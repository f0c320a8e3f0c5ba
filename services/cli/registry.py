"""The services `maas run` can start, and the order `maas up` starts them in.

Each builder imports its service when called, so that starting one service never imports another's
dependencies (the tokenizer and gateway images carry no torch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.common.echo import EchoModel
from services.common.models import ModelRegistry
from services.common.server import GrpcServer, serve
from services.common.settings import EchoSettings, TextSettings, TokenizerSettings, TransformerSettings, VisionSettings


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


SERVICES: dict[str, Callable[[dict[str, Any]], GrpcServer]] = {
    "echo-server": _echo_server,
    "tokenizer": _tokenizer,
    "vision": _vision,
    "text": _text,
    "transformer": _transformer,
}

UP_GROUPS = [["tokenizer"], ["vision", "text", "transformer"]]


async def run_service(name: str, overrides: dict[str, Any]) -> None:
    """Build service `name` from its settings (env, then `overrides`) and serve until signalled."""
    await serve(SERVICES[name](overrides))


def up_groups() -> list[list[str]]:
    """Services `maas up` starts, in groups: each group is ready before the next one starts."""
    return UP_GROUPS
