"""The gateway's Open Inference Protocol: its own models (echo, pipelines) served here, every other
model forwarded to the target the routing file names; index, statistics and metadata aggregated."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from maas.inference import grpc_service_pb2 as pb
from services.common.codec import InferReply
from services.common.errors import DownstreamError, MaasError, ModelNotFound
from services.common.interceptor import label_model
from services.common.lifecycle import Lifecycle
from services.common.v2 import EXTENSIONS, InferenceServicer, stream_infer
from services.common.versions import ModelRegistry
from services.gateway.pipelines import PIPELINES, ready_parts
from services.gateway.router import Router

log = logging.getLogger(__name__)


class GatewayInferenceServicer(InferenceServicer):
    """`inference.GRPCInferenceService` of the gateway: local models, then routed ones."""

    def __init__(self, models: ModelRegistry, lifecycle: Lifecycle, router: Router, inline_max_bytes: int) -> None:
        super().__init__(models, lifecycle, inline_max_bytes=inline_max_bytes)
        self._local = models
        self._router = router

    async def _forward(self, name: str, method: str, request):
        """Forward a v2 call about a routed model by its route (labelling the call with the model).

        Raises:
            ModelNotFound: neither served here nor routed.
            DownstreamError: the call failed (status unchanged).
        """
        if not self._router.routes(name):
            served = sorted({*(m.name for m in self._local), *self._router.routing.models})
            raise ModelNotFound(f"unknown model '{name}'; the gateway serves: {', '.join(served)}")
        label_model(name)
        return await self._router.v2(name, method, request)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext):
        if request.name not in self._local:
            return await self._forward(request.name, "ModelReady", request)
        local = await super().ModelReady(request, context)
        pipeline = PIPELINES.get(request.name)
        if not local.ready or pipeline is None:
            return local
        parts = await asyncio.gather(*(self._ready(part) for part in ready_parts(pipeline)))
        return pb.ModelReadyResponse(ready=all(parts))

    async def _ready(self, model: str) -> bool:
        if not self._router.routes(model):
            return False
        try:
            response = await self._router.v2(model, "ModelReady", pb.ModelReadyRequest(name=model))
        except DownstreamError:
            return False
        return response.ready

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext):
        """The gateway's name and version; extensions every reachable service supports."""
        own = await super().ServerMetadata(request, context)
        answers = await self._each_target("ServerMetadata", pb.ServerMetadataRequest())
        extensions = [e for e in EXTENSIONS if all(e in a.extensions for a in answers.values() if a is not None)]
        return pb.ServerMetadataResponse(name=own.name, version=own.version, extensions=extensions)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext):
        if request.name in self._local:
            return await super().ModelMetadata(request, context)
        return await self._forward(request.name, "ModelMetadata", request)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext):
        if request.name in self._local:
            return await super().ModelConfig(request, context)
        return await self._forward(request.name, "ModelConfig", request)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext):
        if request.model_name in self._local:
            return await super().ModelInfer(request, context)
        return await self._forward(request.model_name, "ModelInfer", request)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request served here or forwarded, answered in order; a failure is an error_message."""
        async for response in stream_infer(request_iterator, self._infer_or_forward):
            yield response

    async def _infer_or_forward(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse | InferReply:
        if request.model_name in self._local:
            return await self._infer(request)
        return await self._forward(request.model_name, "ModelInfer", request)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext):
        """One model's statistics where it is served, or every model's: here and on every target."""
        if request.name and request.name not in self._local:
            return await self._forward(request.name, "ModelStatistics", request)
        response = await super().ModelStatistics(request, context)
        if request.name:
            return response
        for target, answer in (await self._each_target("ModelStatistics", request)).items():
            if answer is not None:
                routed = set(self._router.routing.models_of(target))
                response.model_stats.extend(s for s in answer.model_stats if s.name in routed)
        return response

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext):
        """The gateway's models, then every routed model as its target reports it; the models of a
        target that cannot be reached are listed UNAVAILABLE with the reason."""
        response = await super().RepositoryIndex(request, context)
        errors: dict[str, str] = {}
        answers = await self._each_target("RepositoryIndex", request, errors)
        for target, answer in answers.items():
            routed = self._router.routing.models_of(target)
            if answer is not None:
                response.models.extend(m for m in answer.models if m.name in routed)
            elif not request.ready:
                for name in routed:
                    response.models.add(name=name, state="UNAVAILABLE", reason=f"{target}: {errors[target]}")
        return response

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext):
        if request.model_name in self._local:
            return await super().RepositoryModelLoad(request, context)
        return await self._forward(request.model_name, "RepositoryModelLoad", request)

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext):
        if request.model_name in self._local:
            return await super().RepositoryModelUnload(request, context)
        return await self._forward(request.model_name, "RepositoryModelUnload", request)

    async def _each_target(self, method: str, request, errors: dict[str, str] | None = None) -> dict:
        """Call `method` on every target at once; a target that fails answers None (and its details
        go into `errors`)."""
        targets = self._router.targets

        async def one(name: str):
            try:
                return await self._router.v2_target(targets[name], method, request)
            except MaasError as exc:
                log.warning("%s on %s failed: %s", method, name, exc)
                if errors is not None:
                    errors[name] = str(exc)
                return None

        names = list(targets)
        return dict(zip(names, await asyncio.gather(*(one(name) for name in names)), strict=True))
