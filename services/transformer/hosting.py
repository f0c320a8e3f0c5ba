"""The transformer service as a standalone grpc.aio server (the `grpc` hosting)."""

from __future__ import annotations

import torch

from services.common.server import GrpcServer
from services.common.settings import TransformerSettings
from services.transformer.servicer import build_service


def build_server(settings: TransformerSettings) -> GrpcServer:
    """The transformer service: typed TransformerService, v2 `minilm_embed`, `minilm_sentiment` and `echo`."""
    torch.set_num_threads(settings.num_threads)
    return GrpcServer.of(build_service(settings), settings)
