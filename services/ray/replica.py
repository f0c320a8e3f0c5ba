"""A Serve replica of one maas service: the same models and servicers as the grpc hosting.

A replica knows nothing of sockets. Its methods are named like the RPCs and take and return the
protobuf messages, so the same methods answer two callers: the maas front (`front.py`, by
`DeploymentHandle`) and Serve's own gRPC proxy (which passes `grpc_context`). An error raised here
reaches the front as itself (the front unwraps Ray's wrapper); for Serve's proxy its status code is
set on `grpc_context` before it is raised, since the proxy would otherwise answer INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import ray
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from services.common.batched import BatchedModel
from services.common.devices import DeviceError
from services.common.errors import DeadlineExceeded, MaasError
from services.common.interceptor import CallInfo, status_of
from services.common.lifecycle import Lifecycle
from services.common.logs import configure_logging
from services.common.models import VersionedModel
from services.common.settings import BatchingSettings, ServiceSettings
from services.common.status import StatusServicer
from services.common.v2 import InferenceServicer
from services.ray.autoscaling import ONGOING_ITEMS, OngoingItems
from services.ray.catalog import hosted

log = logging.getLogger(__name__)

Handler = Callable[[Any, Any], Awaitable[Any]]


class BatchingLimits(BaseModel):
    """Batching limits a `user_config` may change on live replicas."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int | None = Field(None, ge=1)
    max_queue_delay_ms: float | None = Field(None, ge=0)
    max_queue_size: int | None = Field(None, ge=1)


class ReplicaConfig(BaseModel):
    """A deployment's `user_config`: what `reconfigure` applies to every replica without restarting it.

    Attributes:
        versions: model -> the versions to serve; a model left out serves its version policy's.
        batching: batching limits of the service's batched models.
    """

    model_config = ConfigDict(extra="forbid")

    versions: dict[str, list[str]] = {}
    batching: BatchingLimits = BatchingLimits()


def replica_device(requested: str, reserves_gpu: bool) -> str:
    """The `device` setting a replica builds its service with, given whether Ray reserved a GPU for it.

    Ray sets `CUDA_VISIBLE_DEVICES` to the GPUs it assigns a replica with `num_gpus`, so there `auto`
    finds them. Ray 2.60 leaves the variable alone for a replica given no GPU, which would then see
    every GPU of its node: there `auto` means the CPU, and a CUDA device is refused, since Ray would
    not account for the GPU it used.

    Args:
        requested: the service's `device` setting.
        reserves_gpu: whether the replica holds a share of a GPU (`ray.get_gpu_ids()` is not empty).

    Returns:
        The setting to build the service with.

    Raises:
        DeviceError: a CUDA device is asked for but no GPU is reserved.
    """
    if reserves_gpu or requested == "cpu":
        return requested
    if requested == "auto":
        return "cpu"
    raise DeviceError(
        f"device {requested!r}, but a replica reserves no GPU: set MAAS_RAY_REPLICA_NUM_GPUS (the deployment's "
        "ray_actor_options.num_gpus), or use auto or cpu"
    )


class ServiceReplica:
    """Hosts one service's models, v2 servicer and typed servicer in a Serve replica."""

    service: ClassVar[str]

    def __init__(self, settings: ServiceSettings) -> None:
        """Build the service (models are loaded by `reconfigure`, which Serve calls next).

        Args:
            settings: the service's settings, as the grpc hosting would read them.

        Raises:
            DeviceError: the `device` setting asks for a GPU this replica was not given.
        """
        configure_logging(settings.log_format, settings.log_level)
        spec = hosted(self.service)
        if spec.uses_torch and isinstance(settings, BatchingSettings):
            import torch

            torch.set_num_threads(settings.num_threads)
            settings = settings.model_copy(update={"device": replica_device(settings.device, bool(ray.get_gpu_ids()))})
        built = spec.build(settings)
        self._models = built.models
        self._lifecycle = Lifecycle()
        self._ongoing = OngoingItems()
        self._v2 = InferenceServicer(built.models, self._lifecycle)
        replica = serve.get_replica_context().replica_id.unique_id
        self._status = StatusServicer(self.service, built.models, self._lifecycle, str, "ray", replica)
        self._typed: dict[str, Handler] = {
            method: getattr(typed.servicer, method) for typed in built.typed_services for method in spec.typed_models
        }

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply a `user_config`: load the versions it names (or the policy's), then unload the rest,
        so requests keep being served throughout; change batching limits on live batchers.

        Args:
            config: the deployment's `user_config` (see `ReplicaConfig`).

        Raises:
            ValueError: the config names an unknown model or is malformed.
            MaasError: a version cannot be loaded.
        """
        update = ReplicaConfig.model_validate(config)
        unknown = sorted(set(update.versions) - {model.name for model in self._models})
        if unknown:
            raise ValueError(f"user_config names models this service does not serve: {', '.join(unknown)}")
        limits = update.batching.model_dump(exclude_none=True)
        for model in self._models:
            assert isinstance(model, VersionedModel)
            if limits and isinstance(model, BatchedModel):
                model.reconfigure(**limits)
            await self._serve_versions(model, update.versions.get(model.name))
        self._lifecycle.mark_serving()

    @staticmethod
    async def _serve_versions(model: VersionedModel, versions: list[str] | None) -> None:
        wanted = versions or model.default_versions()
        for version in wanted:
            await model.load(version)
        for entry in model.index():
            if entry.state == "READY" and entry.version not in wanted:
                await model.unload(entry.version)
        log.info("%s serves versions %s", model.name, ", ".join(wanted))

    async def check_health(self) -> None:
        """Serve's health check: fails until every model is loaded.

        Raises:
            RuntimeError: a model is not ready.
        """
        if not self._lifecycle.ready:
            raise RuntimeError(f"{self.service}: models are still loading")
        missing = [model.name for model in self._models if not model.is_ready()]
        if missing:
            raise RuntimeError(f"{self.service}: no version of {', '.join(missing)} is loaded")

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's hook for custom autoscaling metrics, read by `OngoingItemsPolicy`.

        A coroutine, so Serve runs it on the event loop the requests are counted on (a plain method
        would run on a thread of Serve's pool, beside the counting).

        Returns:
            `ongoing_items`: the mean number of requests this replica worked on since the last call.
        """
        return {ONGOING_ITEMS: self._ongoing.mean()}

    async def _serve(self, method: str, handler: Handler, request: Any, grpc_context: Any) -> Any:
        try:
            with self._ongoing.working(1):
                return await handler(request, None)
        except Exception as exc:
            if grpc_context is not None:
                code, details = status_of(exc, CallInfo(method=method, request_id=grpc_context.request_id()))
                grpc_context.set_code(code)
                grpc_context.set_details(details)
            raise

    async def typed(self, method: str, request: Any, grpc_context: Any = None) -> Any:
        """Answer a typed RPC by name."""
        return await self._serve(method, self._typed[method], request, grpc_context)

    async def batch(self, method: str, requests: list[tuple[Any, float | None]]) -> list[tuple[bool, Any]]:
        """The front's path: answer several requests of one RPC at once, each on its own.

        Args:
            method: a v2 RPC's name, or `typed:<RPC>`.
            requests: (request message, seconds left of its caller's deadline, or None).

        Returns:
            Per request, (True, response) or (False, the error to raise for it). A request past its
            deadline is dropped (its batcher counts it cancelled). An unexpected error is logged here
            and comes back as a bare `MaasError` (INTERNAL, details without internals).
        """
        _, typed, name = method.rpartition("typed:")
        handler = self._typed[name] if typed else getattr(self._status if name == "Status" else self._v2, name)
        answers = (self._answer(name, handler, request, timeout) for request, timeout in requests)
        with self._ongoing.working(len(requests)):
            return await asyncio.gather(*answers)

    @staticmethod
    async def _answer(method: str, handler: Handler, request: Any, timeout: float | None) -> tuple[bool, Any]:
        try:
            return True, await asyncio.wait_for(handler(request, None), timeout)
        except MaasError as exc:
            return False, exc
        except TimeoutError:
            return False, DeadlineExceeded(f"{method}: the caller's deadline passed")
        except Exception:
            log.exception("unhandled error in %s", method)
            return False, MaasError("internal error")

    async def ServerLive(self, request: Any, grpc_context: Any = None) -> Any:
        """v2 ServerLive."""
        return await self._serve("ServerLive", self._v2.ServerLive, request, grpc_context)

    async def ServerReady(self, request: Any, grpc_context: Any = None) -> Any:
        """v2 ServerReady."""
        return await self._serve("ServerReady", self._v2.ServerReady, request, grpc_context)

    async def ServerMetadata(self, request: Any, grpc_context: Any = None) -> Any:
        """v2 ServerMetadata."""
        return await self._serve("ServerMetadata", self._v2.ServerMetadata, request, grpc_context)

    async def ModelReady(self, request: Any, grpc_context: Any = None) -> Any:
        """v2 ModelReady."""
        return await self._serve("ModelReady", self._v2.ModelReady, request, grpc_context)

    async def ModelMetadata(self, request: Any, grpc_context: Any = None) -> Any:
        """v2 ModelMetadata."""
        return await self._serve("ModelMetadata", self._v2.ModelMetadata, request, grpc_context)

    async def ModelConfig(self, request: Any, grpc_context: Any = None) -> Any:
        """v2 ModelConfig."""
        return await self._serve("ModelConfig", self._v2.ModelConfig, request, grpc_context)

    async def ModelInfer(self, request: Any, grpc_context: Any = None) -> Any:
        """v2 ModelInfer."""
        return await self._serve("ModelInfer", self._v2.ModelInfer, request, grpc_context)

    async def ModelStatistics(self, request: Any, grpc_context: Any = None) -> Any:
        """v2 ModelStatistics of this replica."""
        return await self._serve("ModelStatistics", self._v2.ModelStatistics, request, grpc_context)

    async def RepositoryIndex(self, request: Any, grpc_context: Any = None) -> Any:
        """v2 RepositoryIndex of this replica."""
        return await self._serve("RepositoryIndex", self._v2.RepositoryIndex, request, grpc_context)


class TokenizerReplica(ServiceReplica):
    """The tokenizer service in a replica."""

    service = "tokenizer"

    async def Tokenize(self, request: Any, grpc_context: Any = None) -> Any:
        """maas.tokenizer.v1 Tokenize."""
        return await self.typed("Tokenize", request, grpc_context)

    async def Detokenize(self, request: Any, grpc_context: Any = None) -> Any:
        """maas.tokenizer.v1 Detokenize."""
        return await self.typed("Detokenize", request, grpc_context)


class VisionReplica(ServiceReplica):
    """The vision service in a replica."""

    service = "vision"

    async def ClassifyImage(self, request: Any, grpc_context: Any = None) -> Any:
        """maas.vision.v1 ClassifyImage."""
        return await self.typed("ClassifyImage", request, grpc_context)


class TextReplica(ServiceReplica):
    """The text service in a replica."""

    service = "text"

    async def ClassifyText(self, request: Any, grpc_context: Any = None) -> Any:
        """maas.text.v1 ClassifyText."""
        return await self.typed("ClassifyText", request, grpc_context)


class TransformerReplica(ServiceReplica):
    """The transformer service in a replica."""

    service = "transformer"

    async def Embed(self, request: Any, grpc_context: Any = None) -> Any:
        """maas.transformer.v1 Embed."""
        return await self.typed("Embed", request, grpc_context)

    async def ClassifyText(self, request: Any, grpc_context: Any = None) -> Any:
        """maas.transformer.v1 ClassifyText."""
        return await self.typed("ClassifyText", request, grpc_context)


REPLICAS: dict[str, type[ServiceReplica]] = {
    replica.service: replica for replica in (TokenizerReplica, VisionReplica, TextReplica, TransformerReplica)
}
