"""The gateway as a standalone grpc.aio server: typed GatewayService, v2 routing, pipelines, echo."""

from __future__ import annotations

from maas.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from maas.inference import grpc_service_pb2_grpc
from services.common.echo import EchoModel
from services.common.models import ModelRegistry
from services.common.server import GrpcServer, TypedService
from services.common.settings import GatewaySettings
from services.gateway.inference import GatewayInferenceServicer
from services.gateway.pipelines import PIPELINES, PipelineModel
from services.gateway.router import TOKENIZER, Router
from services.gateway.routing import Routing, load_routing
from services.gateway.servicer import GatewayServicer


class GatewayServer(GrpcServer):
    """The gateway's server: routes v2 calls, and closes its channels once drained."""

    def __init__(self, settings: GatewaySettings, router: Router) -> None:
        self.router = router
        pipelines = [
            PipelineModel(pipeline, router)
            for pipeline in PIPELINES
            if router.routes(TOKENIZER) and router.routes(pipeline.model)
        ]
        typed = TypedService(
            full_name=gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
            servicer=GatewayServicer(router, settings),
            add_to_server=gateway_pb2_grpc.add_GatewayServiceServicer_to_server,
        )
        super().__init__("gateway", settings, ModelRegistry([EchoModel(), *pipelines]), [typed])

    def inference_servicer(self) -> grpc_service_pb2_grpc.GRPCInferenceServiceServicer:
        """Local models served here, every other model forwarded by the routing file."""
        return GatewayInferenceServicer(self.models, self.lifecycle, self.router)

    async def stop(self) -> None:
        """Drain, stop, then close every downstream channel."""
        await super().stop()
        await self.router.close()


def build_server(settings: GatewaySettings, routing: Routing | None = None) -> GatewayServer:
    """The gateway over `routing`, or over the routing file its settings name.

    Raises:
        RoutingError: the routing file cannot be used.
    """
    routing = routing or load_routing(settings.routing_file)
    return GatewayServer(settings, Router(routing, settings))
