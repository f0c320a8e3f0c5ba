"""The vision service as a standalone grpc.aio server (the `grpc` hosting)."""

from __future__ import annotations

import torch

from maas.vision.v1 import vision_pb2, vision_pb2_grpc
from services.common.echo import EchoModel
from services.common.models import ModelRegistry
from services.common.server import GrpcServer, TypedService
from services.common.settings import VisionSettings
from services.vision.servicer import FashionModel, VisionServicer


def build_server(settings: VisionSettings) -> GrpcServer:
    """The vision service: typed VisionService, v2 `fashion_cnn` and `echo`."""
    torch.set_num_threads(settings.num_threads)
    model = FashionModel(settings.model_repository, settings)
    typed = TypedService(
        full_name=vision_pb2.DESCRIPTOR.services_by_name["VisionService"].full_name,
        servicer=VisionServicer(model, settings),
        add_to_server=vision_pb2_grpc.add_VisionServiceServicer_to_server,
    )
    return GrpcServer("vision", settings, ModelRegistry([EchoModel(), model]), [typed])
