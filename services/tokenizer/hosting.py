"""The tokenizer as a standalone grpc.aio server (the `grpc` hosting)."""

from __future__ import annotations

from maas.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from services.common.echo import EchoModel
from services.common.models import ModelRegistry
from services.common.server import GrpcServer, TypedService
from services.common.settings import TokenizerSettings
from services.tokenizer.servicer import TokenizerModel, TokenizerServicer


def build_server(settings: TokenizerSettings) -> GrpcServer:
    """The tokenizer service: typed TokenizerService, v2 `tokenizer` and `echo`."""
    model = TokenizerModel(settings.model_repository, settings)
    typed = TypedService(
        full_name=tokenizer_pb2.DESCRIPTOR.services_by_name["TokenizerService"].full_name,
        servicer=TokenizerServicer(model),
        add_to_server=tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server,
    )
    return GrpcServer("tokenizer", settings, ModelRegistry([EchoModel(), model]), [typed])
