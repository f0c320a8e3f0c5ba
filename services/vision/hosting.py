"""The vision service as a standalone grpc.aio server (the `grpc` hosting)."""

from __future__ import annotations

import torch

from services.common.server import GrpcServer
from services.common.settings import VisionSettings
from services.vision.servicer import build_service


def build_server(settings: VisionSettings) -> GrpcServer:
    """The vision service: typed VisionService, v2 `fashion_cnn` and `echo`."""
    torch.set_num_threads(settings.num_threads)
    return GrpcServer.of(build_service(settings), settings)
