"""The text service as a standalone grpc.aio server (the `grpc` hosting)."""

from __future__ import annotations

import torch

from maas.text.v1 import text_pb2, text_pb2_grpc
from services.common.echo import EchoModel
from services.common.models import ModelRegistry
from services.common.server import GrpcServer, TypedService
from services.common.settings import TextSettings
from services.text.servicer import ReviewModel, TextServicer


def build_server(settings: TextSettings) -> GrpcServer:
    """The text service: typed TextService, v2 `review_lstm` and `echo`."""
    torch.set_num_threads(settings.num_threads)
    model = ReviewModel(settings.model_repository, settings)
    typed = TypedService(
        full_name=text_pb2.DESCRIPTOR.services_by_name["TextService"].full_name,
        servicer=TextServicer(model),
        add_to_server=text_pb2_grpc.add_TextServiceServicer_to_server,
    )
    return GrpcServer("text", settings, ModelRegistry([EchoModel(), model]), [typed])
