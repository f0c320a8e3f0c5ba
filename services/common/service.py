"""What a service is, independent of how it is hosted: its models and its typed servicers.

Each service builds one `Service`; the `grpc` hosting puts it behind a grpc.aio server, the `ray`
hosting runs it inside Ray Serve replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

from services.common.models import ModelRegistry


@dataclass(frozen=True)
class TypedService:
    """A typed `maas.<service>.v1` servicer and how to add it to a server."""

    full_name: str
    servicer: object
    add_to_server: Callable[[object, grpc.aio.Server], None]


@dataclass(frozen=True)
class Service:
    """One service's models (served by the v2 servicer) and its typed servicers."""

    name: str
    models: ModelRegistry
    typed_services: Sequence[TypedService] = field(default_factory=tuple)
