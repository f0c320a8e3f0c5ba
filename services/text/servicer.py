"""The typed `maas.text.v1` API over the v2 model `review_lstm`."""

from __future__ import annotations

import grpc

from maas.text.v1 import text_pb2 as pb
from maas.text.v1 import text_pb2_grpc as pb_grpc
from services.common.interceptor import label_model
from services.common.typed import classify
from services.common.versions import ModelRegistry
from services.text.spec import MODEL_NAME, TextSettings


class TextServicer(pb_grpc.TextServiceServicer):
    """`maas.text.v1.TextService` over `review_lstm` (same batcher, same statistics)."""

    def __init__(self, models: ModelRegistry, settings: TextSettings) -> None:
        self._model = models.get(MODEL_NAME)
        self._max_texts = settings.max_texts

    async def ClassifyText(
        self, request: pb.ClassifyTextRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyTextResponse:
        label_model(MODEL_NAME)
        results, version = await classify(
            self._model, request.items, request.top_k, request.model_version, self._max_texts
        )
        return pb.ClassifyTextResponse(results=results, model_version=version)
