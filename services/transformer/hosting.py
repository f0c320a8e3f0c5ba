"""The transformer service as a standalone grpc.aio server (the `grpc` hosting)."""

from __future__ import annotations

import torch

from maas.transformer.v1 import transformer_pb2, transformer_pb2_grpc
from services.common.echo import EchoModel
from services.common.models import ModelRegistry
from services.common.server import GrpcServer, TypedService
from services.common.settings import TransformerSettings
from services.transformer.servicer import EmbedModel, EncoderCache, SentimentModel, TransformerServicer


def build_server(settings: TransformerSettings) -> GrpcServer:
    """The transformer service: typed TransformerService, v2 `minilm_embed`, `minilm_sentiment` and `echo`."""
    torch.set_num_threads(settings.num_threads)
    encoders = EncoderCache()
    embed = EmbedModel(settings.model_repository, settings, encoders)
    sentiment = SentimentModel(settings.model_repository, settings, encoders)
    typed = TypedService(
        full_name=transformer_pb2.DESCRIPTOR.services_by_name["TransformerService"].full_name,
        servicer=TransformerServicer(embed, sentiment),
        add_to_server=transformer_pb2_grpc.add_TransformerServiceServicer_to_server,
    )
    return GrpcServer("transformer", settings, ModelRegistry([EchoModel(), embed, sentiment]), [typed])
