"""A Serve replica of one maas service: the same models and servicers as the grpc hosting.

A replica knows nothing of sockets. The front (`front.py`, by `DeploymentHandle`) calls its `batch`
method; Serve's own gRPC proxy calls methods named like the RPCs, made for each service from its proto
descriptors (`replica_class`, the list the front forwards too) and taking and returning the protobuf
messages. An error raised here reaches the front as itself (the front unwraps Ray's wrapper); for
Serve's proxy its status code is set on `grpc_context` before it is raised, since the proxy would
otherwise answer INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from services.common import timing
from services.common.devices import DeviceError
from services.common.errors import DeadlineExceeded, MaasError
from services.common.interceptor import CallInfo, status_of
from services.common.lifecycle import Lifecycle
from services.common.logs import configure_logging
from services.common.service import build_service
from services.common.settings import ServiceSettings
from services.common.spec import ServiceSpec
from services.common.status import StatusServicer
from services.common.v2 import InferenceServicer
from services.common.versions import ModelVersions
from services.ray.autoscaling import ONGOING_ITEMS, OngoingItems
from services.ray.rpcs import STATUS, Rpc, rpcs

log = logging.getLogger(__name__)

Handler = Callable[[Any, Any], Awaitable[Any]]


class BatchingLimits(BaseModel):
    """Batching limits a `user_config` may change on live replicas."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int | None = Field(None, ge=1)
    max_queue_delay_ms: float | None = Field(None, ge=0)
    max_queue_size: int | None = Field(None, ge=1)
    max_latency_ms: float | None = Field(None, ge=0)


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

    def __init__(self, spec: ServiceSpec, settings: ServiceSettings) -> None:
        """Build the service (models are loaded by `reconfigure`, which Serve calls next).

        Args:
            spec: the service's spec.
            settings: its settings, as the grpc hosting would read them.

        Raises:
            DeviceError: the `device` setting asks for a GPU this replica was not given.
        """
        configure_logging(settings.log_format, settings.log_level)
        self.service = spec.name
        if spec.torch:
            settings = settings.model_copy(update={"device": replica_device(settings.device, bool(ray.get_gpu_ids()))})
        built = build_service(spec, settings)
        self._models = built.models
        self._lifecycle = Lifecycle()
        self._ongoing = OngoingItems()
        v2 = InferenceServicer(built.models, self._lifecycle)
        typed = built.typed_services[0].servicer if built.typed_services else None
        replica = serve.get_replica_context().replica_id.unique_id
        status = StatusServicer(self.service, built.models, self._lifecycle, str, "ray", replica)
        self._handlers: dict[str, Handler] = {
            rpc.key: getattr(typed if rpc.model is not None else v2, rpc.name) for rpc in rpcs(spec)
        }
        self._handlers[STATUS] = status.Status

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
            if limits:
                model.reconfigure(**limits)
            await self._serve_versions(model, update.versions.get(model.name))
        self._lifecycle.mark_serving()

    @staticmethod
    async def _serve_versions(model: ModelVersions, versions: list[str] | None) -> None:
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

    async def batch(
        self, method: str, requests: list[tuple[Any, float | None, bool]]
    ) -> list[tuple[bool, Any, timing.Timing | None]]:
        """The front's path: answer several requests of one RPC at once, each on its own.

        Args:
            method: a v2 RPC's name, or `typed:<RPC>`.
            requests: (request message, seconds left of its caller's deadline or None, whether its
                caller wants its timing).

        Returns:
            Per request, (True, response, timing) or (False, the error to raise for it, timing); the
            timing is None unless it was wanted. A request past its deadline is dropped (its batcher
            counts it cancelled). An unexpected error is logged here and comes back as a bare
            `MaasError` (INTERNAL, details without internals).
        """
        handler = self._handlers[method]
        answers = (self._answer(method, handler, *request) for request in requests)
        with self._ongoing.working(len(requests)):
            return await asyncio.gather(*answers)

    @staticmethod
    async def _answer(
        method: str, handler: Handler, request: Any, timeout: float | None, timed: bool
    ) -> tuple[bool, Any, timing.Timing | None]:
        timing.arrive(time.perf_counter_ns())
        recorded = timing.begin() if timed else None
        try:
            return True, await asyncio.wait_for(handler(request, None), timeout), recorded
        except MaasError as exc:
            return False, exc, recorded
        except TimeoutError:
            return False, DeadlineExceeded(f"{method}: the caller's deadline passed"), recorded
        except Exception:
            log.exception("unhandled error in %s", method)
            return False, MaasError("internal error"), recorded


def _method(rpc: Rpc) -> Callable[..., Awaitable[Any]]:
    async def method(self: ServiceReplica, request: Any, grpc_context: Any = None) -> Any:
        return await self._serve(rpc.name, self._handlers[rpc.key], request, grpc_context)

    method.__name__ = method.__qualname__ = rpc.name
    method.__doc__ = f"{rpc.name}, for Serve's gRPC proxy."
    return method


def replica_class(spec: ServiceSpec) -> type[ServiceReplica]:
    """The deployment class of a service: `ServiceReplica` with a method per RPC it answers.

    Args:
        spec: the service's spec.

    Returns:
        A subclass of `ServiceReplica`, built as `cls(spec, settings)`.
    """
    methods = {rpc.name: _method(rpc) for rpc in rpcs(spec)}
    name = "".join(part.title() for part in spec.name.replace("-", "_").split("_")) + "Replica"
    return type(
        name,
        (ServiceReplica,),
        {"__module__": __name__, "__doc__": f"The {spec.name} service in a replica.", **methods},
    )
