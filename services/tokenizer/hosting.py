"""The tokenizer as a standalone grpc.aio server (the `grpc` hosting)."""

from __future__ import annotations

from services.common.server import GrpcServer
from services.common.settings import TokenizerSettings
from services.tokenizer.servicer import build_service


def build_server(settings: TokenizerSettings) -> GrpcServer:
    """The tokenizer service: typed TokenizerService, v2 `tokenizer` and `echo`."""
    return GrpcServer.of(build_service(settings), settings)
