"""Every service maas ships, each declared once in its `spec.py`.

The CLI (`maas run`, `maas up`), the ray hosting, the gateway's pipelines and typed routes, and the
generated files (Serve config, default routing file, the chart's list of services) read the services
from here. Adding a service is its folder and one line below.
"""

from __future__ import annotations

from services.common.spec import ServiceSpec
from services.gateway.spec import SPEC as GATEWAY
from services.text.spec import SPEC as TEXT
from services.tokenizer.spec import SPEC as TOKENIZER
from services.transformer.spec import SPEC as TRANSFORMER
from services.vision.spec import SPEC as VISION

SERVICES: dict[str, ServiceSpec] = {spec.name: spec for spec in (GATEWAY, TOKENIZER, VISION, TEXT, TRANSFORMER)}


def service(name: str) -> ServiceSpec:
    """The service called `name`.

    Raises:
        KeyError: maas has no such service.
    """
    if name not in SERVICES:
        raise KeyError(f"maas has no service {name!r}; services: {', '.join(SERVICES)}")
    return SERVICES[name]


def model_services() -> list[ServiceSpec]:
    """The services that serve models from the repository, in start order (the tokenizer first)."""
    return sorted((spec for spec in SERVICES.values() if spec.models), key=lambda spec: spec.group)
