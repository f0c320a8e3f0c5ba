"""The gateway as a standalone grpc.aio server: typed GatewayService, v2 routing, pipelines, echo,
API keys, and the routing file reloaded live."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from maas.common.v1 import common_pb2_grpc
from maas.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from maas.inference import grpc_service_pb2_grpc
from services.common.auth import ApiKeys, load_api_keys
from services.common.echo import echo_model
from services.common.server import GrpcServer, TypedService, host_port
from services.common.versions import ModelRegistry
from services.gateway.inference import GatewayInferenceServicer
from services.gateway.pipelines import PIPELINES, pipeline_model
from services.gateway.rest import HttpServer, RestBinding
from services.gateway.router import TOKENIZER, Router
from services.gateway.routing import Routing, parse_routing, read_routing_text
from services.gateway.servicer import GatewayServicer
from services.gateway.spec import GatewaySettings
from services.gateway.status import GatewayStatusServicer
from services.gateway.watch import RoutingWatcher, digest

log = logging.getLogger(__name__)


class GatewayServer(GrpcServer):
    """The gateway's server: routes v2 calls, follows its routing file, closes its channels once drained."""

    def __init__(
        self,
        settings: GatewaySettings,
        router: Router,
        watcher: RoutingWatcher | None = None,
        auth: ApiKeys | None = None,
    ) -> None:
        """Serve the models `router` routes; the set of pipelines is fixed by the routing at start.

        Args:
            settings: the gateway's settings.
            router: the router over the initial routing.
            watcher: reloads the routing file while serving; None: the routing never changes.
            auth: API keys calls must present; None: no key needed.
        """
        self.router = router
        self.watcher = watcher
        self._watch: asyncio.Task | None = None
        pipelines = [
            pipeline_model(pipeline, router)
            for pipeline in PIPELINES.values()
            if router.routes(TOKENIZER) and router.routes(pipeline.model)
        ]
        typed = TypedService(
            full_name=gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
            servicer=GatewayServicer(router, settings),
            add_to_server=gateway_pb2_grpc.add_GatewayServiceServicer_to_server,
        )
        super().__init__("gateway", settings, ModelRegistry([echo_model(), *pipelines]), [typed], auth)
        self.v2 = GatewayInferenceServicer(self.models, self.lifecycle, self.router, settings.inline_max_bytes)
        self.http: HttpServer | None = None
        if settings.http_enabled:
            binding = RestBinding(self.v2, self.lifecycle, auth, settings.max_message_bytes)
            self.http = HttpServer(
                binding.app(),
                settings.host,
                settings.http_port,
                settings.tls_cert_file,
                settings.tls_key_file,
                settings.tls_client_ca_file,
            )

    def inference_servicer(self) -> grpc_service_pb2_grpc.GRPCInferenceServiceServicer:
        """Local models served here, every other model forwarded by the routing file."""
        return self.v2

    def status_servicer(self) -> common_pb2_grpc.StatusServiceServicer:
        """The gateway's own status, then every target's."""
        return GatewayStatusServicer(super().status_servicer(), self.router)

    async def start(self) -> None:
        """Start serving, then start following the routing file."""
        await super().start()
        if self.watcher is not None:
            self._watch = asyncio.get_running_loop().create_task(self.watcher.run())

    async def prepare(self) -> None:
        """Connect to every target and serve HTTP before reporting SERVING, so the first call finds its channel
        connected (the HTTP readiness route answers 503 until SERVING).

        Raises:
            OSError: the HTTP port could not be bound.
        """
        await self.router.connect(self.settings.connect_timeout_seconds)
        if self.http is not None:
            await self.http.start()
            log.info("gateway serving HTTP on %s", host_port(self.settings.host, self.http.port))

    async def stop(self) -> None:
        """Stop following the routing file, drain, stop, then close every downstream channel."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await super().stop()
        if self.http is not None:
            await self.http.stop()
        await self.router.close()


def build_server(settings: GatewaySettings, routing: Routing | None = None) -> GatewayServer:
    """The gateway over `routing` (fixed), or over the routing file its settings name (reloaded
    when it changes); with API keys if its settings name a keys file.

    Raises:
        RoutingError: the routing file cannot be used.
        KeysFileError: the API keys file cannot be used.
    """
    keys = settings.api_keys_file
    auth = load_api_keys(keys, settings.rate_limit_replicas) if keys is not None else None
    if routing is not None:
        return GatewayServer(settings, Router(routing, settings), auth=auth)
    path = settings.routing_file
    text = read_routing_text(path)
    router = Router(parse_routing(text, str(path)), settings)
    watcher = RoutingWatcher(path, router, settings.reload_interval_seconds, digest(text))
    return GatewayServer(settings, router, watcher, auth)
