"""The typed `maas.transformer.v1` API over the v2 models `minilm_embed` and `minilm_sentiment`."""

from __future__ import annotations

import grpc

from maas.common.v1 import common_pb2
from maas.transformer.v1 import transformer_pb2 as pb
from maas.transformer.v1 import transformer_pb2_grpc as pb_grpc
from services.common.interceptor import label_model
from services.common.sequences import padded
from services.common.typed import classify
from services.common.versions import ModelRegistry
from services.transformer.spec import EMBED_MODEL, SENTIMENT_MODEL, TransformerSettings


class TransformerServicer(pb_grpc.TransformerServiceServicer):
    """`maas.transformer.v1.TransformerService` over the two v2 models (same batchers, same statistics)."""

    def __init__(self, models: ModelRegistry, settings: TransformerSettings) -> None:
        self._embed = models.get(EMBED_MODEL)
        self._sentiment = models.get(SENTIMENT_MODEL)
        self._max_texts = settings.max_texts

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        label_model(EMBED_MODEL)
        loaded = self._embed.get(request.model_version)
        if loaded.admit is not None:
            loaded.admit()
        inputs = padded(request.items, self._max_texts)
        result = await loaded.infer(inputs, {})
        embeddings = [common_pb2.Embedding(values=row) for row in result.outputs[0].array]
        return pb.EmbedResponse(embeddings=embeddings, model_version=loaded.version)

    async def ClassifyText(
        self, request: pb.ClassifyTextRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyTextResponse:
        label_model(SENTIMENT_MODEL)
        results, version = await classify(
            self._sentiment, request.items, request.top_k, request.model_version, self._max_texts
        )
        return pb.ClassifyTextResponse(results=results, model_version=version)
