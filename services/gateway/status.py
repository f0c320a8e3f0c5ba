"""The gateway's `maas.common.v1.StatusService`: itself, then what every target it routes to answers.

A target answers from the one replica its channel picks (round_robin), so a target with several pods
shows one of them per call. The models of a target that does not answer are listed UNREACHABLE, with
the reason.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from maas.common.v1 import common_pb2 as pb
from maas.common.v1 import common_pb2_grpc as pb_grpc
from services.common.clients import Downstream
from services.common.errors import MaasError
from services.common.status import SERVICE_NAME, StatusServicer
from services.gateway.router import Router

log = logging.getLogger(__name__)
UNREACHABLE = "UNREACHABLE"


class GatewayStatusServicer(pb_grpc.StatusServiceServicer):
    """The status of the gateway and of every service it routes to."""

    def __init__(self, own: StatusServicer, router: Router) -> None:
        """Args:
        own: the gateway's own status (its identity, echo and pipelines).
        router: the routing, whose every target is asked.
        """
        self._own = own
        self._router = router

    async def _target(self, name: str, downstream: Downstream) -> pb.StatusResponse:
        try:
            stub = downstream.stub(pb_grpc.StatusServiceStub)
            return await downstream.call(stub.Status, pb.StatusRequest(), f"/{SERVICE_NAME}/Status", timeout=10)
        except MaasError as exc:
            log.warning("Status of %s failed: %s", name, exc)
            return pb.StatusResponse(
                versions=[
                    pb.VersionStatus(model=model, state=UNREACHABLE, reason=f"target '{name}': {exc}")
                    for model in self._router.routing.models_of(name)
                ]
            )

    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusResponse:
        response = self._own.status()
        targets = self._router.targets
        answers = await asyncio.gather(*(self._target(name, downstream) for name, downstream in targets.items()))
        seen = {server.id for server in response.servers}
        for answer in answers:
            fresh = {server.id for server in answer.servers} - seen
            response.servers.extend(server for server in answer.servers if server.id in fresh)
            response.versions.extend(v for v in answer.versions if v.server in fresh or v.state == UNREACHABLE)
            seen |= fresh
        return response
