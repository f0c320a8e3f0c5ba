"""The gateway's downstream side: one channel per routing target, and each model's traffic policy —
version pin or weighted split, per-route timeout, retries of calls that surely did not run within a
retry budget. The routing can be swapped while calls are in flight (`update`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from prometheus_client import Counter

from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from services.common.clients import Downstream, remaining_seconds
from services.common.codec import Tensor, decode_outputs, encode_inputs
from services.common.errors import DownstreamError, ModelNotFound, NotRun
from services.common.model import Parameter
from services.common.tls import TlsFilesError
from services.common.v2 import SERVICE_NAME as V2_SERVICE_NAME
from services.common.v2 import set_parameter
from services.gateway.routing import ModelRoute, Routing, Target
from services.gateway.spec import GatewaySettings
from services.gateway.traffic import RetryBudget, WeightedPicker
from services.tokenizer.spec import MODEL_NAME as TOKENIZER

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BACKOFF_SECONDS = 1.0
VERSION_FIELDS = {
    "ModelInfer": "model_version",
    "ModelMetadata": "version",
    "ModelConfig": "version",
    "ModelReady": "version",
    "ModelStatistics": "version",
}
"""Where a v2 request names its version (load and unload name it in `parameters["version"]`)."""
KEEP_VERSION = frozenset({"ModelStatistics"})
"""Requests whose empty version the route leaves empty: statistics of every version."""

RETRIES = Counter(
    "maas_gateway_retries_total",
    "Downstream calls the gateway retried, by model and why: unreachable, refused, or in_flight (if allowed).",
    ["model", "reason"],
)
RETRIES_DENIED = Counter(
    "maas_gateway_retries_denied_total",
    "Failed downstream calls that could have been retried but the model's retry budget was spent.",
    ["model"],
)

Invoke = Callable[[Downstream, str, float | None], Awaitable[T]]
"""One try of a call: (target, version to ask for, route timeout) -> response."""


@dataclass(frozen=True)
class _Backend:
    downstream: Downstream
    version: str


class Route:
    """One model's live policy: its backends, the split between them, timeout, retries and budget."""

    def __init__(self, spec: ModelRoute, downstreams: dict[str, Downstream]) -> None:
        """Bind the route in the routing file to the channels of its targets.

        Args:
            spec: the model's route in the routing file.
            downstreams: target name -> its channel.
        """
        self.spec = spec
        self.backends = [_Backend(downstreams[b.target], b.version) for b in spec.backends]
        self.picker = WeightedPicker([b.weight for b in spec.backends])
        self.budget = RetryBudget(spec.retries.budget_ratio, spec.retries.budget_min_per_second)

    @property
    def primary(self) -> Downstream:
        """The target answering metadata and readiness: the route's target, or the split's first."""
        return self.backends[0].downstream

    def choose(self, version: str, balance: bool, avoid: set[int]) -> tuple[int, _Backend, str]:
        """The backend for one try and the version to ask of it.

        A call naming a version goes to the backend pinned to that version (the primary if none
        is); one naming none is spread by the weights if `balance`, else goes to the primary, and
        asks for the backend's version.

        Args:
            version: the version the caller named ("" = none).
            balance: spread calls naming no version over the split.
            avoid: backends earlier tries of this call failed on.

        Returns:
            (backend index, backend, version to ask for).
        """
        if version:
            index = next((i for i, b in enumerate(self.backends) if b.version == version), 0)
            return index, self.backends[index], version
        index = self.picker.pick(avoid) if balance and len(self.backends) > 1 else 0
        backend = self.backends[index]
        return index, backend, backend.version


class Router:
    """Routes calls to the targets serving each model, over one long-lived channel per target."""

    def __init__(self, routing: Routing, settings: GatewaySettings) -> None:
        """Open a channel to every target of `routing` (connecting lazily).

        Args:
            routing: the routing to serve.
            settings: the gateway's settings (message limits, timeouts, reconnect backoff).
        """
        self._settings = settings
        self._tls = settings.downstream_tls()
        self._tls_stamp = self._tls.stamp()
        self.targets: dict[str, Downstream] = {}
        self._routes: dict[str, Route] = {}
        self._retiring: set[asyncio.Task] = set()
        self.routing = routing
        self._apply(routing)

    def _downstream(self, name: str, target: Target) -> Downstream:
        return Downstream(
            name,
            target.grpc_target,
            self._settings.max_message_bytes,
            self._settings.default_timeout_seconds,
            round(self._settings.max_reconnect_backoff_seconds * 1000),
            tuple(target.metadata.items()),
            round(self._settings.dns_min_resolution_interval_s * 1000),
            None if target.plaintext else self._tls,
            self._tls_stamp,
        )

    def _apply(self, routing: Routing) -> list[Downstream]:
        """Make `routing` the one new calls follow; returns the channels it no longer uses."""
        targets = {}
        for name, target in routing.targets.items():
            current = self.targets.get(name)
            keep = current is not None and (current.target, current.metadata, current.tls_stamp, current.tls) == (
                target.grpc_target,
                tuple(target.metadata.items()),
                self._tls_stamp,
                not target.plaintext and self._tls.enabled,
            )
            targets[name] = current if keep else self._downstream(name, target)
        retired = [d for name, d in self.targets.items() if targets.get(name) is not d]
        self.routing = routing
        self.targets = targets
        self._routes = {model: Route(spec, targets) for model, spec in routing.models.items()}
        return retired

    def update(self, routing: Routing) -> None:
        """Follow `routing` from now on. Calls in flight finish where they are; channels to targets
        that went away or changed address close once their calls finish (at most the default
        timeout later).

        Args:
            routing: the new, already validated routing.
        """
        for downstream in self._apply(routing):
            task = asyncio.get_running_loop().create_task(downstream.close(self._settings.default_timeout_seconds))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def reload_tls(self) -> bool:
        """Dial every target anew if the gateway's TLS files changed (a rotated client certificate);
        calls in flight finish on the old channels. A changed set that cannot be used yet (a key from
        another certificate) is logged and left for the next check.

        Returns:
            True if the channels were replaced.
        """
        if not self._tls.enabled:
            return False
        stamp = self._tls.stamp()
        if stamp == self._tls_stamp:
            return False
        try:
            self._tls.credentials()
        except TlsFilesError as exc:
            log.warning("the gateway's TLS files changed but cannot be used yet: %s", exc)
            return False
        self._tls_stamp = stamp
        self.update(self.routing)
        log.info("TLS files changed: every target dialled again with them")
        return True

    def routes(self, model: str) -> bool:
        """True if the routing file routes `model`."""
        return model in self._routes

    def route(self, model: str) -> Route:
        """The live route of `model`.

        Raises:
            ModelNotFound: the routing file does not route `model`.
        """
        route = self._routes.get(model)
        if route is None:
            raise ModelNotFound(
                f"model '{model}' is not routed by this gateway; routed models: {', '.join(self._routes)}"
            )
        return route

    def owner(self, model: str) -> Downstream:
        """The primary target serving `model` (see `Route.primary`).

        Raises:
            ModelNotFound: the routing file does not route `model`.
        """
        return self.route(model).primary

    async def send(self, model: str, version: str, invoke: Invoke[T], balance: bool = True) -> T:
        """Make a call of `model` by its route: pick a backend, call it with the route's timeout, and
        retry a try that surely did not run (never one that may have) while tries, budget and the
        caller's deadline last.

        Args:
            model: the routed model.
            version: the version the caller named ("" = none: the route decides).
            invoke: makes one try on a target, asking for a version, with the route's timeout.
            balance: spread calls that name no version over a split (inference); False sends them to
                the primary target (metadata, readiness, repository calls).

        Returns:
            What `invoke` returned.

        Raises:
            ModelNotFound: `model` is not routed.
            DownstreamError: the last try failed (status unchanged).
        """
        route = self.route(model)
        route.budget.record_call()
        avoid: set[int] = set()
        attempt = 1
        while True:
            index, backend, asked = route.choose(version, balance, avoid)
            try:
                return await invoke(backend.downstream, asked, route.spec.timeout_seconds)
            except DownstreamError as exc:
                wait = self._retry_wait(model, route, exc, attempt)
                if wait is None:
                    raise
                avoid.add(index)
                why = exc.not_run.value if exc.not_run else "in_flight"
                log.info("retrying %s after %s on %s: %s", model, why, exc.target, exc)
                RETRIES.labels(model, why).inc()
                await asyncio.sleep(wait)
            attempt += 1
            route = self._routes.get(model, route)

    def _retry_wait(self, model: str, route: Route, exc: DownstreamError, attempt: int) -> float | None:
        """Seconds to wait before retrying after `exc`, or None if the call must fail now."""
        lost = exc.code == "UNAVAILABLE" and route.spec.retries.in_flight
        if (exc.not_run is None and not lost) or attempt >= route.spec.retries.attempts:
            return None
        wait = 0.0
        if exc.not_run is NotRun.UNREACHABLE:
            wait = min(MAX_BACKOFF_SECONDS, route.spec.retries.backoff_seconds * 2 ** (attempt - 1))
        if remaining_seconds(self._settings.default_timeout_seconds) <= wait:
            return None
        if not route.budget.try_spend():
            RETRIES_DENIED.labels(model).inc()
            return None
        return wait

    async def v2(self, model: str, method: str, request: Any) -> Any:
        """Call Open Inference Protocol `method` about `model` by its route. ModelInfer is spread by
        the route's split; other methods go to the primary target. A version the caller left empty
        becomes the route's (ModelInfer, ModelMetadata, ModelConfig, ModelReady).

        Raises:
            ModelNotFound: `model` is not routed.
            DownstreamError: the call failed (status unchanged).
        """
        field = VERSION_FIELDS.get(method)
        named = getattr(request, field) if field else _parameter_version(request)

        async def invoke(downstream: Downstream, version: str, timeout: float | None) -> Any:
            if field and method not in KEEP_VERSION:
                setattr(request, field, version)
            stub = downstream.stub(grpc_service_pb2_grpc.GRPCInferenceServiceStub)
            return await downstream.call(getattr(stub, method), request, f"/{V2_SERVICE_NAME}/{method}", timeout)

        return await self.send(model, named, invoke, balance=method == "ModelInfer")

    async def v2_target(self, downstream: Downstream, method: str, request: Any) -> Any:
        """Call Open Inference Protocol `method` on one target (one of `targets`), whatever the
        models: for aggregates such as the repository index.

        Raises:
            DownstreamError: the call failed (status unchanged).
        """
        stub = downstream.stub(grpc_service_pb2_grpc.GRPCInferenceServiceStub)
        return await downstream.call(getattr(stub, method), request, f"/{V2_SERVICE_NAME}/{method}")

    async def typed(
        self,
        model: str,
        version: str,
        stub_class: Callable[[Any], Any],
        service: str,
        method: str,
        request_for: Callable[[str], Any],
    ) -> Any:
        """Call a typed RPC serving `model` by its route.

        Args:
            model: the routed model the call is about.
            version: the version the caller named ("" = none: the route decides).
            stub_class: the generated stub class of the typed service.
            service: the typed service's full name, e.g. `maas.vision.v1.VisionService`.
            method: the RPC's name.
            request_for: builds the request message, given the version to ask for.

        Raises:
            ModelNotFound: `model` is not routed.
            DownstreamError: the call failed (status unchanged).
        """

        async def invoke(downstream: Downstream, asked: str, timeout: float | None) -> Any:
            stub = downstream.stub(stub_class)
            return await downstream.call(getattr(stub, method), request_for(asked), f"/{service}/{method}", timeout)

        return await self.send(model, version, invoke)

    async def infer(
        self, model: str, inputs: list[Tensor], version: str = "", parameters: dict[str, Parameter] | None = None
    ) -> dict[str, Tensor]:
        """Run v2 ModelInfer on `model` by its route.

        Returns:
            Output name -> tensor.

        Raises:
            ModelNotFound: `model` is not routed.
            DownstreamError: the call failed (status unchanged).
        """
        request = v2pb.ModelInferRequest(model_name=model, model_version=version)
        encode_inputs(request, inputs)
        for key, value in (parameters or {}).items():
            set_parameter(key, value, request.parameters[key])
        return decode_outputs(await self.v2(model, "ModelInfer", request))

    async def tokenize(self, texts: np.ndarray, max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention masks of `texts` (BYTES [N]) from the tokenizer's v2 model.

        Returns:
            INPUT_IDS and ATTENTION_MASK, INT64 [N, L], padded with 0 to the longest.

        Raises:
            ModelNotFound: the tokenizer is not routed.
            DownstreamError: the tokenizer refused the texts (status unchanged).
        """
        parameters: dict[str, Parameter] = {} if max_length is None else {"max_length": max_length}
        outputs = await self.infer(TOKENIZER, [Tensor("TEXT", "BYTES", texts)], parameters=parameters)
        return outputs["INPUT_IDS"].array, outputs["ATTENTION_MASK"].array

    async def connect(self, timeout: float) -> list[str]:
        """Connect the channel to every target, waiting at most `timeout` seconds in all.

        Args:
            timeout: seconds to wait.

        Returns:
            The targets still not connected (they keep trying in the background; each is logged).
        """

        async def ready(downstream: Downstream) -> bool:
            try:
                await asyncio.wait_for(downstream.channel.channel_ready(), timeout)
            except TimeoutError:
                return False
            return True

        names = list(self.targets)
        connected = await asyncio.gather(*(ready(self.targets[name]) for name in names))
        missing = [name for name, ok in zip(names, connected, strict=True) if not ok]
        for name in missing:
            log.warning(
                "target %s (%s) not connected after %.1f s; serving anyway", name, self.targets[name].target, timeout
            )
        return missing

    async def close(self) -> None:
        """Close every channel, retiring ones included."""
        for downstream in self.targets.values():
            await downstream.close()
        await asyncio.gather(*self._retiring, return_exceptions=True)


def _parameter_version(request: Any) -> str:
    """The version a repository load/unload names in `parameters["version"]` ("" if none)."""
    parameters = getattr(request, "parameters", None)
    if parameters is None or "version" not in parameters:
        return ""
    parameter = parameters["version"]
    kind = parameter.WhichOneof("parameter_choice")
    return str(getattr(parameter, kind)) if kind else ""
