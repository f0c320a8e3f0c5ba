"""The grpc.aio server every service runs: health, reflection, metrics, limits and graceful drain.

On SIGTERM (or Ctrl-C) a server drains: health turns NOT_SERVING, new calls get UNAVAILABLE, calls
in flight finish, new calls go on being refused until the clients have moved away
(`DRAIN_QUIET_SECONDS`), and the server stops, within `drain_grace_seconds`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from maas.common.v1 import common_pb2_grpc
from maas.inference import grpc_service_pb2_grpc
from services.common import metrics, telemetry
from services.common.auth import ApiKeys
from services.common.errors import MaasError
from services.common.front import NativeFront
from services.common.interceptor import ServerInterceptor
from services.common.lifecycle import Lifecycle
from services.common.logs import configure_logging
from services.common.metrics import MetricsServer
from services.common.service import Service, TypedService, build_service
from services.common.settings import ServiceSettings
from services.common.spec import ServiceSpec, import_object
from services.common.status import SERVICE_NAME as STATUS_SERVICE_NAME
from services.common.status import StatusServicer
from services.common.tls import CertificateFiles, TlsFilesError
from services.common.v2 import SERVICE_NAME as V2_SERVICE_NAME
from services.common.v2 import InferenceServicer
from services.common.versions import ModelRegistry

log = logging.getLogger(__name__)

IDLE_STOP_GRACE_SECONDS = 1.0
DRAIN_QUIET_SECONDS = 0.25
DRAIN_QUIET_MAX_SECONDS = 2.0
"""Once its calls have finished, a draining server goes on refusing new ones (UNAVAILABLE, marked as not
run, so a client retries them elsewhere) until none has arrived for `DRAIN_QUIET_SECONDS`, for at most
`DRAIN_QUIET_MAX_SECONDS`, before it stops: clients that watch its health move away within
milliseconds, and calls still in transit get a refusal instead of being cut off by the stop."""


def host_port(host: str, port: int) -> str:
    """Format an address for gRPC, bracketing IPv6 hosts."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    """Options of a service's gRPC server: message limits, keepalive, and the connection age.

    A client resolves a headless Service's name again only when a connection closes, so a server that
    ages its connections (`max_connection_age_s`) lets its clients find replicas added since.

    Args:
        settings: the service's settings.

    Returns:
        The `grpc.aio.server` options.
    """
    limit = settings.max_message_bytes
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ]
    if settings.max_connection_age_s:
        options += [
            ("grpc.max_connection_age_ms", round(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", round(settings.max_connection_age_grace_s * 1000)),
        ]
    return options


class GrpcServer:
    """One service's server: the v2 servicer over `models`, typed servicers, health and metrics."""

    def __init__(
        self,
        name: str,
        settings: ServiceSettings,
        models: ModelRegistry,
        typed_services: Sequence[TypedService] = (),
        auth: ApiKeys | None = None,
    ) -> None:
        self.name = name
        self._auth = auth
        self.settings = settings
        self.models = models
        self.lifecycle = Lifecycle()
        self._typed_services = list(typed_services)
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._metrics: MetricsServer | None = None
        self._front: NativeFront | None = None
        self.port = 0
        self.health_port = 0

    @classmethod
    def of(cls, service: Service, settings: ServiceSettings) -> GrpcServer:
        """The server of a hosting-neutral `Service`."""
        return cls(service.name, settings, service.models, service.typed_services)

    @property
    def front(self) -> NativeFront | None:
        """The native front on the service's port (setting `front=native`), while it serves."""
        return self._front

    @property
    def metrics_port(self) -> int:
        """The Prometheus port bound (0 before start)."""
        return self._metrics.port if self._metrics else 0

    def inference_servicer(self) -> grpc_service_pb2_grpc.GRPCInferenceServiceServicer:
        """The Open Inference Protocol servicer: over this server's own models (the gateway routes)."""
        return InferenceServicer(self.models, self.lifecycle, inline_max_bytes=self.settings.inline_max_bytes)

    def status_servicer(self) -> common_pb2_grpc.StatusServiceServicer:
        """`maas.common.v1.StatusService`: this server and its models."""
        return StatusServicer(self.name, self.models, self.lifecycle, lambda: host_port(self.settings.host, self.port))

    @property
    def service_names(self) -> list[str]:
        """Full names of the services this server answers for in health checks."""
        return [V2_SERVICE_NAME, *(s.full_name for s in self._typed_services)]

    async def start(self) -> None:
        """Bind, start serving (NOT_SERVING while models load), load every model, then report SERVING.

        Raises:
            RuntimeError: the port could not be bound.
        """
        self._server = grpc.aio.server(
            interceptors=[ServerInterceptor(self.lifecycle, self._auth, self.name)],
            options=server_options(self.settings),
            maximum_concurrent_rpcs=self.settings.max_concurrent_rpcs or None,
        )
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.inference_servicer(), self._server)
        common_pb2_grpc.add_StatusServiceServicer_to_server(self.status_servicer(), self._server)
        for service in self._typed_services:
            service.add_to_server(service.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [*self.service_names, STATUS_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        for service in ("", *self.service_names):
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        address = host_port(self.settings.host, self.settings.port)
        native = getattr(self.settings, "front", "python") == "native"
        if native:
            self.port = self._bind(self._server, host_port("127.0.0.1", 0))
        else:
            self.port = self._bind(self._server, address)
        if self.settings.health_port is not None:
            self._health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._health_server)
            self.health_port = self._health_server.add_insecure_port(
                host_port(self.settings.host, self.settings.health_port)
            )
            if not self.health_port:
                raise RuntimeError(f"{self.name}: could not bind health port {self.settings.health_port}")
            await self._health_server.start()
        await self._server.start()
        if native:
            self._front = NativeFront(self.settings, address, self.port, self.name)
            self.port = self._front.port
        self._metrics = MetricsServer(self.settings.host, self.settings.metrics_bind_port)
        for model in self.models:
            metrics.MODEL_READY.labels(model.name).set_function(lambda model=model: float(model.is_ready()))
        for model in self.models:
            await model.load("")
        await self.prepare()
        if self._front is not None and self._auth is None and not telemetry.enabled():
            log.info("%s: native front answers %s", self.name, ", ".join(self._front.route(self.models)) or "nothing")
        self.lifecycle.mark_serving()
        for service in ("", *self.service_names):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "%s serving on %s%s (metrics on port %d%s)",
            self.name,
            host_port(self.settings.host, self.port),
            " with TLS" if self.settings.tls_cert_file else "",
            self.metrics_port,
            f", health on port {self.health_port}" if self.health_port else "",
            extra={"port": self.port, "metrics_port": self.metrics_port},
        )

    async def prepare(self) -> None:
        """Whatever must be ready before the server reports SERVING, once its models are loaded; nothing here.

        Raises:
            OSError: an address could not be bound.
        """

    def _bind(self, server: grpc.aio.Server, address: str) -> int:
        """Bind the service's port: TLS from the certificate files when the settings name them.

        Raises:
            RuntimeError: the address could not be bound.
            TlsFilesError: the certificate files cannot be used.
        """
        settings = self.settings
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            files = CertificateFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
            port = server.add_secure_port(address, files.credentials())
        else:
            port = server.add_insecure_port(address)
        if not port:
            raise RuntimeError(f"{self.name}: could not bind {address}")
        return port

    async def stop(self) -> None:
        """Drain and stop: NOT_SERVING, refuse new calls, let calls in flight finish within the grace."""
        if self._server is None:
            return
        loop = asyncio.get_running_loop()
        grace = self.settings.drain_grace_seconds
        deadline = loop.time() + grace
        await self._health.enter_graceful_shutdown()
        self.lifecycle.start_draining()
        log.info("%s draining: %d calls in flight", self.name, self.lifecycle.in_flight)
        if self._front is not None:
            self._front.drain()
        if await self.lifecycle.wait_idle(grace) and await self._front_idle(deadline - loop.time()):
            await self.lifecycle.wait_quiet(DRAIN_QUIET_SECONDS, min(DRAIN_QUIET_MAX_SECONDS, deadline - loop.time()))
            remaining = min(IDLE_STOP_GRACE_SECONDS, max(0.0, deadline - loop.time()))
        else:
            log.warning(
                "%s: %d calls still in flight after %.1fs; cancelling them", self.name, self.lifecycle.in_flight, grace
            )
            remaining = 0.0
        await self.close(remaining)
        log.info("%s stopped", self.name)

    async def _front_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the native front's own calls to be answered (True without one)."""
        return self._front is None or await self._front.wait_idle(timeout)

    async def close(self, grace: float = 0.0) -> None:
        """Stop serving at once (calls in flight get `grace` seconds) and close the health and metrics
        endpoints."""
        if self._server is None:
            return
        if self._front is not None:
            await asyncio.to_thread(self._front.stop, grace)
            self._front = None
        await self._server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
        if self._metrics is not None:
            self._metrics.close()
        self._server = None


SWITCH_INTERVAL_SECONDS = 0.001
"""How long a thread running Python keeps the interpreter while another thread waits for it (Python's
default is 5 ms). A served process tokenizes, decodes and converts on worker threads while its event loop
answers calls; every time the loop wants the interpreter back it waited up to the whole interval, several
times per call. See `docs/design.md` for the measurements."""


def freeze_startup_objects() -> None:
    """Collect start-up's garbage, then move every object alive into the collector's permanent generation.

    Called by `serve`, the process's own entry point, never by a server started inside another process
    (a test's). A process that imported torch and loaded its models holds about 200,000 objects that live
    as long as it does. Every full collection walked all of them, about 120 ms on this machine with the interpreter
    held, so health checks and every other call waited for it whenever requests made enough garbage to
    trigger one. Frozen, they are no longer walked; objects made later (versions loaded later included)
    are collected as before, and memory freed by reference counting is freed as before.
    """
    gc.collect()
    gc.freeze()


def build_server(spec: ServiceSpec, settings: ServiceSettings) -> GrpcServer:
    """A service's server under the grpc hosting: its own builder (the gateway's), or the server of its
    models and typed API.

    Raises:
        DeviceError, RepositoryError, ImportError: see `build_service`; the gateway's builder raises its own.
    """
    if spec.server:
        return import_object(spec.server)(settings)
    return GrpcServer.of(build_service(spec, settings), settings)


async def serve(server: GrpcServer) -> None:
    """Run `server` until SIGTERM or SIGINT, then drain it.

    Prints `READY <name> <host>:<port>` on stdout once every model is loaded and the server is
    SERVING, for a parent process (`maas up`) or a test to read. Traces if the `OTEL_*` settings
    ask for it, and flushes the last spans before returning.
    """
    configure_logging(server.settings.log_format, server.settings.log_level)
    try:
        telemetry.configure(server.name)
    except ValueError as exc:
        log.error("%s failed to start: %s", server.name, exc)
        raise SystemExit(1) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
    except (MaasError, OSError, RuntimeError, TlsFilesError) as exc:
        await server.close()
        log.error("%s failed to start: %s", server.name, exc)
        raise SystemExit(1) from None
    freeze_startup_objects()
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    sys.stdout.write(f"READY {server.name} {host_port(server.settings.host, server.port)}\n")
    sys.stdout.flush()
    await stop.wait()
    await server.stop()
    telemetry.shutdown()
