"""The maas front of the ray hosting: our grpc.aio server, calling replicas by `DeploymentHandle`.

The front is the same `GrpcServer` the grpc hosting runs (interceptor, health, metrics, drain), with
servicers that forward each RPC's request message to the service's Serve deployment and return its
response message; they are made from the service's proto descriptors, from the same list of RPCs as
the replica's methods (`services.ray.rpcs`). Validation, batching and errors all happen in the replica,
in the same servicer code as the grpc hosting, so both hostings answer alike.

This module is the one place that reads Ray's private attributes and handle options; it refuses to
import under a Ray other than the one they were written for.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import ray
from ray.serve.handle import DeploymentHandle

from maas.common.v1 import common_pb2, common_pb2_grpc
from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc as pb_grpc
from services.common.interceptor import current_call, label_model
from services.common.server import GrpcServer
from services.common.service import TypedService
from services.common.settings import RaySettings, ServiceSettings
from services.common.spec import ServiceSpec
from services.common.status import StatusServicer
from services.common.timing import Timing
from services.common.v2 import stream_infer
from services.common.versions import ModelRegistry
from services.ray.errors import unwrapped
from services.ray.rpcs import STATUS, Rpc, rpcs

RAY_VERSION = "2.60.0"
"""The Ray whose private attributes and handle options this module reads."""


def require_ray(version: str) -> None:
    """Refuse a Ray other than the one this module was written for.

    Args:
        version: the installed Ray's version.

    Raises:
        RuntimeError: another version (what to do is in the message).
    """
    if version != RAY_VERSION:
        raise RuntimeError(
            f"the ray hosting's front reads private attributes of Ray {RAY_VERSION} (a handle's router and its "
            f"replicas, `_init(_run_router_in_separate_loop=False)`), and Ray {version} is installed: install "
            f"ray[serve]=={RAY_VERSION}, or check services/ray/front.py against Ray {version} and update RAY_VERSION"
        )


require_ray(ray.__version__)


def running_replicas(handle: DeploymentHandle) -> int:
    """The running replicas a handle's router routes to, read without a call to Serve.

    Ray keeps them in private attributes (2.60: the router's request router's `curr_replicas`, or
    `_running_replicas` before its first request), so they are read defensively.

    Args:
        handle: a deployment's handle.

    Returns:
        Their number; 1 while the router knows none (or Ray's internals differ).
    """
    router = getattr(getattr(handle, "_router", None), "_asyncio_router", None)
    replicas = getattr(getattr(router, "_request_router", None), "curr_replicas", None)
    if replicas is None:
        replicas = getattr(router, "_running_replicas", None)
    try:
        return max(1, len(replicas))
    except TypeError:
        return 1


class _Coalescer:
    """Sends the calls of one replica method that arrive while others are in flight as one replica call.

    A call goes out at once when fewer than `calls_per_replica` per running replica are in flight (so a
    lone request never waits); otherwise it waits for the next free slot and goes with the others
    waiting, up to `max_items`. Ray's cost per call is far above our servicers' cost per request, so
    this is what makes the handle path fast under load. The slots follow the running replicas, so
    each replica the autoscaler adds gets its own calls.
    """

    def __init__(self, handle: DeploymentHandle, method: str, calls_per_replica: int, max_items: int) -> None:
        self._handle = handle
        self._method = method
        self._calls_per_replica = calls_per_replica
        self._max_items = max_items
        self._waiting: deque[tuple[Any, float | None, Timing | None, asyncio.Future]] = deque()
        self._in_flight = 0
        self._sending: set[asyncio.Task] = set()

    async def call(self, request: Any) -> Any:
        call = current_call()
        timeout = None if call is None or call.deadline is None else max(0.0, call.deadline - time.monotonic())
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((request, timeout, None if call is None else call.timing, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        max_calls = self._calls_per_replica * running_replicas(self._handle)
        while self._waiting and self._in_flight < max_calls:
            batch = []
            while self._waiting and len(batch) < self._max_items:
                item = self._waiting.popleft()
                if not item[3].done():
                    batch.append(item)
            if batch:
                self._in_flight += 1
                task = asyncio.create_task(self._send(batch))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Any, float | None, Timing | None, asyncio.Future]]) -> None:
        requests = [(request, timeout, timed is not None) for request, timeout, timed, _ in batch]
        try:
            results = await self._handle.remote(self._method, requests)
        except Exception as exc:
            error = unwrapped(exc)
            results = [(False, error, None)] * len(batch)
        finally:
            self._in_flight -= 1
            self._dispatch()
        for (_, _, timed, future), (ok, value, replica_timing) in zip(batch, results, strict=True):
            if future.done():
                continue
            if timed is not None and replica_timing is not None:
                timed.adopt(replica_timing)
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


class ReplicaClient:
    """Calls one deployment's replica methods by name; Ray's errors are unwrapped here, once.

    It routes with a handle of its own, opened on the front's event loop: Ray's default router runs
    on a thread of its own and hands every call and answer across threads, and its handle calls go
    through Ray's actor calls. Routing on the caller's loop and calling replicas over Serve's gRPC
    transport (both private handle options in Ray 2.60) measured about 1.7x the front's throughput.
    """

    def __init__(self, handle: DeploymentHandle, calls_per_replica: int, max_items: int) -> None:
        """Args:
        handle: a handle of the deployment (only its name and application are used).
        calls_per_replica: replica calls in flight per method and running replica before requests are
            sent together.
        max_items: most requests per replica call.
        """
        self._deployment = (handle.deployment_name, handle.app_name)
        self._handle: DeploymentHandle | None = None
        self._calls_per_replica = calls_per_replica
        self._max_items = max_items
        self._methods: dict[str, _Coalescer] = {}

    def open(self) -> None:
        """Create the handle and its router on the running event loop (the loop every call runs on)."""
        handle = DeploymentHandle(*self._deployment)
        handle._init(_run_router_in_separate_loop=False)
        self._handle = handle.options(method_name="batch", _by_reference=False)

    async def close(self) -> None:
        """Stop the handle's router (its tasks on the event loop)."""
        if self._handle is not None:
            await self._handle.shutdown_async()
            self._handle = None
        self._methods.clear()

    def running_replicas(self) -> int:
        """The running replicas the router routes to (1 while unknown or not open)."""
        return running_replicas(self._handle) if self._handle is not None else 1

    async def call(self, method: str, request: Any) -> Any:
        """Answer `request` with the replicas' `method` (a v2 RPC's name, or `typed:<RPC>`).

        Within the caller's deadline: the replica drops work whose deadline has passed.

        Raises:
            MaasError: the replica's own error, or Overloaded / Unavailable from Ray.
            RuntimeError: the client is not open.
        """
        if self._handle is None:
            raise RuntimeError("the replica client is not open")
        if method not in self._methods:
            self._methods[method] = _Coalescer(self._handle, method, self._calls_per_replica, self._max_items)
        return await self._methods[method].call(request)


def _forward(rpc: Rpc, replicas: ReplicaClient) -> Callable[..., Awaitable[Any]]:
    """A servicer method sending `rpc`'s request to the replicas, labelling the call with its model."""
    key, model, field = rpc.key, rpc.model, rpc.model_field

    async def forward(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if model is not None:
            label_model(model)
        elif field is not None:
            label_model(getattr(request, field))
        return await replicas.call(key, request)

    forward.__name__ = forward.__qualname__ = rpc.name
    return forward


def forwarding_servicers(spec: ServiceSpec, replicas: ReplicaClient) -> tuple[Any, list[TypedService]]:
    """The front's servicers of a service: v2 and its typed API, every unary RPC forwarded to the replicas
    (the RPCs `services.ray.rpcs` lists, the replica's methods), and v2 ModelStreamInfer answered
    request by request by the replicas' ModelInfer.

    Args:
        spec: the service's spec.
        replicas: the client of its deployment.

    Returns:
        The v2 servicer, and the typed service to add to the front (none if the service has no typed API).
    """
    found = rpcs(spec)

    async def stream(
        self: Any, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for response in stream_infer(request_iterator, lambda r: replicas.call("ModelInfer", r)):
            yield response

    v2_methods = {rpc.name: _forward(rpc, replicas) for rpc in found if rpc.model is None}
    v2_methods["ModelStreamInfer"] = stream
    v2 = type("ForwardingInferenceServicer", (pb_grpc.GRPCInferenceServiceServicer,), v2_methods)
    typed_services = []
    if spec.typed is not None:
        base = getattr(importlib.import_module(spec.typed.grpc_module), f"{spec.typed.service}Servicer")
        methods = {rpc.name: _forward(rpc, replicas) for rpc in found if rpc.model is not None}
        servicer = type(f"Forwarding{spec.typed.service}Servicer", (base,), methods)()
        typed_services.append(TypedService(spec.typed.full_name, servicer, spec.typed.add_to_server()))
    return v2(), typed_services


class ForwardingStatusServicer(common_pb2_grpc.StatusServiceServicer):
    """`maas.common.v1.StatusService` under the ray hosting: the front itself, then each running replica.

    Serve routes each call to a replica of its choosing, so the front asks until it has heard from as
    many replicas as are running, at most twice that many times.
    """

    def __init__(self, own: StatusServicer, replicas: ReplicaClient) -> None:
        self._own = own
        self._replicas = replicas

    async def Status(self, request: common_pb2.StatusRequest, context: grpc.aio.ServicerContext):
        own = self._own.server()
        response = common_pb2.StatusResponse(servers=[own])
        heard: set[str] = set()
        wanted = self._replicas.running_replicas()
        for _ in range(2 * wanted):
            answer = await self._replicas.call(STATUS, request)
            fresh = {server.id for server in answer.servers} - heard
            response.servers.extend(server for server in answer.servers if server.id in fresh)
            response.versions.extend(version for version in answer.versions if version.server in fresh)
            heard |= fresh
            if len(heard) >= wanted:
                break
        return response


class RayFront(GrpcServer):
    """A service's gRPC front under the ray hosting: same contract, replicas behind a handle."""

    def __init__(
        self, spec: ServiceSpec, settings: ServiceSettings, handle: DeploymentHandle, ray: RaySettings
    ) -> None:
        """Args:
        spec: the service's spec.
        settings: its settings (host, port, limits of the front's server).
        handle: the handle of its deployment.
        ray: the ray hosting's settings (how the front sends requests together).
        """
        self._replicas = ReplicaClient(handle, ray.front_calls_per_replica, ray.front_max_requests_per_call)
        self._v2, typed = forwarding_servicers(spec, self._replicas)
        super().__init__(spec.name, settings, ModelRegistry([]), typed)

    def inference_servicer(self) -> pb_grpc.GRPCInferenceServiceServicer:
        """v2 answered by the replicas."""
        return self._v2

    def status_servicer(self) -> common_pb2_grpc.StatusServiceServicer:
        """The front's own status (it holds no models), then its replicas'."""
        return ForwardingStatusServicer(super().status_servicer(), self._replicas)

    def running_replicas(self) -> int:
        """The running replicas the front sends calls to (1 while it knows none)."""
        return self._replicas.running_replicas()

    async def start(self) -> None:
        """Open the replica client on this event loop, then start serving (see `GrpcServer.start`).

        Raises:
            RuntimeError: the port could not be bound.
        """
        self._replicas.open()
        await super().start()

    async def stop(self) -> None:
        """Drain and stop the server, then the replica client's router."""
        await super().stop()
        await self._replicas.close()
