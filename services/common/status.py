"""`maas.common.v1.StatusService`: what one server runs, and how loaded it is.

Every server answers for itself: its identity (service, host, process, address, hosting), whether it
serves, its calls in flight, and each version of each of its models with its state, device, queue
depth, requests in flight and counts. The gateway adds the answers of every service it routes to.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from importlib.metadata import version as package_version

import grpc

from maas.common.v1 import common_pb2 as pb
from maas.common.v1 import common_pb2_grpc as pb_grpc
from services.common.lifecycle import Lifecycle
from services.common.versions import ModelRegistry

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StatusService"].full_name


def server_id(service: str, replica: str = "") -> str:
    """A server's id in a status answer: `<hostname>/<pid>/<service>`, and `/<replica>` for a Ray replica (one
    process may run several servers: `maas run ray` runs every service's front)."""
    return f"{socket.gethostname()}/{os.getpid()}/{service}" + (f"/{replica}" if replica else "")


def versions_of(models: ModelRegistry, server: str) -> list[pb.VersionStatus]:
    """Every version of every model in `models`, as a status answer lists them.

    Args:
        models: a server's models.
        server: the server's id.
    """
    versions = []
    for model in models:
        for entry in model.index():
            stats = model.version_stats(entry.version)
            load = model.load_of(entry.version)
            versions.append(
                pb.VersionStatus(
                    model=model.name,
                    version=entry.version,
                    state=entry.state,
                    reason=entry.reason,
                    device=load.device,
                    queue_depth=load.queue_depth,
                    in_flight=load.in_flight,
                    inference_count=stats.inference_count,
                    execution_count=stats.execution_count,
                    server=server,
                )
            )
    return versions


class StatusServicer(pb_grpc.StatusServiceServicer):
    """The status of one server: its identity, lifecycle and models."""

    def __init__(
        self,
        service: str,
        models: ModelRegistry,
        lifecycle: Lifecycle,
        address: Callable[[], str],
        hosting: str = "grpc",
        replica: str = "",
    ) -> None:
        """Args:
        service: the service's name.
        models: its models.
        lifecycle: its lifecycle (readiness, calls in flight).
        address: the address it serves on, once bound.
        hosting: `grpc` or `ray`.
        replica: the Ray replica's id (ray hosting).
        """
        self._service = service
        self._models = models
        self._lifecycle = lifecycle
        self._address = address
        self._hosting = hosting
        self._id = server_id(service, replica)
        self._started = time.monotonic()

    def server(self) -> pb.ServerStatus:
        """This server's identity and state."""
        return pb.ServerStatus(
            id=self._id,
            service=self._service,
            hosting=self._hosting,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            address=self._address(),
            version=package_version("maas"),
            ready=self._lifecycle.ready,
            calls_in_flight=self._lifecycle.in_flight,
            uptime_seconds=time.monotonic() - self._started,
        )

    def status(self) -> pb.StatusResponse:
        """This server's answer."""
        return pb.StatusResponse(servers=[self.server()], versions=versions_of(self._models, self._id))

    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusResponse:
        return self.status()
