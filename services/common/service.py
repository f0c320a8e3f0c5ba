"""What a service is, independent of how it is hosted: its models and its typed servicers.

`build_service` makes one from a service's spec; the `grpc` hosting puts it behind a grpc.aio server,
the `ray` hosting runs it inside Ray Serve replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from services.common.batched import serve_model
from services.common.devices import select_device
from services.common.echo import echo_model
from services.common.model import SharedPool
from services.common.spec import ServiceSpec, import_object
from services.common.versions import ModelRegistry


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


def build_service(spec: ServiceSpec, settings: Any) -> Service:
    """A service of models from its spec: `echo`, every model of the spec from the repository (none
    loaded yet), and its typed servicer. A torch service takes its thread count and device from its
    settings.

    Args:
        spec: the service's spec.
        settings: its settings.

    Returns:
        The service.

    Raises:
        DeviceError: the `device` setting asks for a device this process does not see.
        RepositoryError: a model's `model.json` is invalid.
        ImportError: a model class cannot be imported.
    """
    device = "cpu"
    if spec.torch:
        import torch

        torch.set_num_threads(settings.num_threads)
        device = str(select_device(settings.device))
    pool = SharedPool()
    served = [serve_model(m.load_class(), settings, device, pool, m.name, m.make) for m in spec.models]
    models = ModelRegistry([echo_model(), *served])
    typed = []
    if spec.typed is not None:
        typed.append(
            TypedService(
                full_name=spec.typed.full_name,
                servicer=import_object(spec.typed.servicer)(models, settings),
                add_to_server=spec.typed.add_to_server(),
            )
        )
    return Service(spec.name, models, typed)
