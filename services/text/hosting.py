"""The text service as a standalone grpc.aio server (the `grpc` hosting)."""

from __future__ import annotations

import torch

from services.common.server import GrpcServer
from services.common.settings import TextSettings
from services.text.servicer import build_service


def build_server(settings: TextSettings) -> GrpcServer:
    """The text service: typed TextService, v2 `review_lstm` and `echo`."""
    torch.set_num_threads(settings.num_threads)
    return GrpcServer.of(build_service(settings), settings)
