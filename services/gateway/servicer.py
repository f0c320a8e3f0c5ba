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
from maas.vision.v1 import vision_pb2
from services.common import offload
from services.common.errors import InvalidInput, Overloaded
from services.common.interceptor import label_model, received_bytes
from services.common.spec import TypedSpec
from services.gateway.router import TOKENIZER, Router
from services.gateway.spec import GatewaySettings
from services.text import spec as text
from services.tokenizer import spec as tokenizer
from services.transformer import spec as transformer
from services.vision import spec as vision


@dataclass(frozen=True)
class TypedRoute:
    """How a gateway RPC reaches a model's own typed RPC: the v2 model it is about, and its service's API."""

    model: str
    stub: Any
    service: str
    request: Any

    @classmethod
    def of(cls, model: str, typed: TypedSpec | None, request: str) -> TypedRoute:
        """The route to `model`'s service, sending `request` messages of its typed API."""
        assert typed is not None
        return cls(model, typed.stub(), typed.full_name, typed.message(request))


TOKENIZE = TypedRoute.of(TOKENIZER, tokenizer.SPEC.typed, "TokenizeRequest")
CLASSIFY_IMAGE = TypedRoute.of(vision.MODEL_NAME, vision.SPEC.typed, "ClassifyImageRequest")
EMBED = TypedRoute.of(transformer.EMBED_MODEL, transformer.SPEC.typed, "EmbedRequest")
TEXT_ROUTES = {
    pb.TEXT_MODEL_LSTM: TypedRoute.of(text.MODEL_NAME, text.SPEC.typed, "ClassifyTextRequest"),
    pb.TEXT_MODEL_TRANSFORMER: TypedRoute.of(
        transformer.SENTIMENT_MODEL, transformer.SPEC.typed, "ClassifyTextRequest"
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

    async def Tokenize(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        label_model(TOKENIZE.model)
        return await self._router.typed(
            TOKENIZE.model, "", TOKENIZE.stub, TOKENIZE.service, "Tokenize", lambda _version: request
        )

    async def ClassifyImage(
        self, request: pb.ClassifyImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyImageResponse:
        route = CLASSIFY_IMAGE
        label_model(route.model)
        images = await offload.run(
            lambda: [vision_pb2.Image(encoded=image) for image in request.images],
            received_bytes(request),
            self._settings.inline_max_bytes,
        )
        response = await self._router.typed(
            route.model,
            request.model_version,
            route.stub,
            route.service,
            "ClassifyImage",
            lambda version: route.request(images=images, top_k=request.top_k, model_version=version),
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
        route = EMBED
        label_model(route.model)
        self._router.route(route.model)
        ids, mask = await self._router.tokenize(await self._texts(request))
        items = tokenized(ids, mask)
        response = await self._router.typed(
            route.model,
            request.model_version,
            route.stub,
            route.service,
            "Embed",
            lambda version: route.request(items=items, model_version=version),
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
