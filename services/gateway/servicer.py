"""The gateway's typed API, `maas.gateway.v1.GatewayService`: text calls run tokenizer -> model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from maas.common.v1 import common_pb2
from maas.gateway.v1 import gateway_pb2 as pb
from maas.gateway.v1 import gateway_pb2_grpc as pb_grpc
from maas.text.v1 import text_pb2, text_pb2_grpc
from maas.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from maas.transformer.v1 import transformer_pb2, transformer_pb2_grpc
from maas.vision.v1 import vision_pb2, vision_pb2_grpc
from services.common import offload
from services.common.errors import InvalidInput, Overloaded
from services.common.interceptor import label_model, received_bytes
from services.common.settings import GatewaySettings
from services.gateway.pipelines import LSTM_SENTIMENT, MINILM_SENTIMENT, TEXT_EMBED
from services.gateway.router import TOKENIZER, Router

VISION_MODEL = "fashion_cnn"


def _service(module: Any, name: str) -> str:
    return module.DESCRIPTOR.services_by_name[name].full_name


@dataclass(frozen=True)
class TextRoute:
    """How ClassifyText reaches one text model: its v2 name and its service's typed ClassifyText."""

    model: str
    stub: Any
    service: str
    request: Any


TEXT_ROUTES = {
    pb.TEXT_MODEL_LSTM: TextRoute(
        LSTM_SENTIMENT.model,
        text_pb2_grpc.TextServiceStub,
        _service(text_pb2, "TextService"),
        text_pb2.ClassifyTextRequest,
    ),
    pb.TEXT_MODEL_TRANSFORMER: TextRoute(
        MINILM_SENTIMENT.model,
        transformer_pb2_grpc.TransformerServiceStub,
        _service(transformer_pb2, "TransformerService"),
        transformer_pb2.ClassifyTextRequest,
    ),
}
TEXT_MODEL_NAMES = {"lstm": pb.TEXT_MODEL_LSTM, "transformer": pb.TEXT_MODEL_TRANSFORMER}


def tokenized(ids: np.ndarray, mask: np.ndarray) -> list[common_pb2.TokenizedText]:
    """Padded ids and masks as typed items, each at its own length."""
    lengths = mask.sum(axis=1)
    return [common_pb2.TokenizedText(input_ids=row[:length].tolist()) for row, length in zip(ids, lengths, strict=True)]


def _texts(texts: Sequence[str]) -> np.ndarray:
    if not texts:
        raise InvalidInput("no texts in the request", field="texts")
    array = np.empty(len(texts), dtype=object)
    array[:] = [text.encode() for text in texts]
    return array


class GatewayServicer(pb_grpc.GatewayServiceServicer):
    """`maas.gateway.v1.GatewayService` over the routed services."""

    def __init__(self, router: Router, settings: GatewaySettings) -> None:
        self._router = router
        self._settings = settings
        self._default_text_model = TEXT_MODEL_NAMES[settings.default_text_model]

    async def Tokenize(
        self, request: tokenizer_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> tokenizer_pb2.TokenizeResponse:
        label_model(TOKENIZER)
        return await self._router.typed(
            TOKENIZER,
            "",
            tokenizer_pb2_grpc.TokenizerServiceStub,
            _service(tokenizer_pb2, "TokenizerService"),
            "Tokenize",
            lambda _version: request,
        )

    async def ClassifyImage(
        self, request: pb.ClassifyImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyImageResponse:
        label_model(VISION_MODEL)
        images = await offload.run(
            lambda: [vision_pb2.Image(encoded=image) for image in request.images],
            received_bytes(request),
            self._settings.inline_max_bytes,
        )
        response = await self._router.typed(
            VISION_MODEL,
            request.model_version,
            vision_pb2_grpc.VisionServiceStub,
            _service(vision_pb2, "VisionService"),
            "ClassifyImage",
            lambda version: vision_pb2.ClassifyImageRequest(images=images, top_k=request.top_k, model_version=version),
        )
        return pb.ClassifyImageResponse(results=response.results, model_version=response.model_version)

    async def ClassifyText(
        self, request: pb.ClassifyTextRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyTextResponse:
        model = request.model or self._default_text_model
        response = await self._classify(await self._texts(request), model, request.top_k, request.model_version)
        return pb.ClassifyTextResponse(results=response.results, model=model, model_version=response.model_version)

    async def StreamClassifyText(
        self, request: pb.ClassifyTextRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamClassifyTextResponse]:
        """Classify in chunks, a few at once; each text's answer is sent as soon as its chunk is done."""
        texts = await self._texts(request)
        if len(texts) > self._settings.max_stream_texts:
            raise Overloaded(
                f"{len(texts)} texts; the limit is {self._settings.max_stream_texts} per stream", field="texts"
            )
        model = request.model or self._default_text_model
        size = self._settings.stream_chunk_size
        slots = asyncio.Semaphore(self._settings.stream_concurrency)

        async def chunk(start: int) -> tuple[int, Any]:
            async with slots:
                return start, await self._classify(
                    texts[start : start + size], model, request.top_k, request.model_version
                )

        tasks = [asyncio.create_task(chunk(start)) for start in range(0, len(texts), size)]
        try:
            for done in asyncio.as_completed(tasks):
                start, response = await done
                for offset, result in enumerate(response.results):
                    yield pb.StreamClassifyTextResponse(
                        index=start + offset, result=result, model_version=response.model_version
                    )
        finally:
            for task in tasks:
                task.cancel()

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        label_model(TEXT_EMBED.model)
        self._router.route(TEXT_EMBED.model)
        ids, mask = await self._router.tokenize(await self._texts(request))
        items = tokenized(ids, mask)
        response = await self._router.typed(
            TEXT_EMBED.model,
            request.model_version,
            transformer_pb2_grpc.TransformerServiceStub,
            _service(transformer_pb2, "TransformerService"),
            "Embed",
            lambda version: transformer_pb2.EmbedRequest(items=items, model_version=version),
        )
        return pb.EmbedResponse(embeddings=response.embeddings, model_version=response.model_version)

    async def _texts(self, request: pb.ClassifyTextRequest | pb.EmbedRequest) -> np.ndarray:
        """The request's texts as UTF-8 BYTES (on a worker thread when the request is large)."""
        return await offload.run(
            lambda: _texts(request.texts), received_bytes(request), self._settings.inline_max_bytes
        )

    async def _classify(self, texts: np.ndarray, model: int, top_k: int, version: str) -> Any:
        """Tokenize, then classify with the text model `model` (a `TextModel`)."""
        route = TEXT_ROUTES.get(model)
        if route is None:
            raise InvalidInput(
                f"unknown text model {model}; use TEXT_MODEL_LSTM or TEXT_MODEL_TRANSFORMER", field="model"
            )
        label_model(route.model)
        self._router.route(route.model)
        ids, mask = await self._router.tokenize(texts)
        items = tokenized(ids, mask)
        return await self._router.typed(
            route.model,
            version,
            route.stub,
            route.service,
            "ClassifyText",
            lambda asked: route.request(items=items, top_k=top_k, model_version=asked),
        )
