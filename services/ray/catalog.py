"""The services the ray hosting runs, and what it needs to know of each.

Builders are named by import path and imported when used, so that hosting one service never imports
another's dependencies.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.common.service import Service
from services.common.settings import (
    ServiceSettings,
    TextSettings,
    TokenizerSettings,
    TransformerSettings,
    VisionSettings,
)


@dataclass(frozen=True)
class HostedService:
    """One service as the ray hosting sees it.

    Attributes:
        name: the service (and Serve application) name.
        settings: its settings class (its env prefix).
        builder: `module:function` that builds its `Service` from settings.
        typed_grpc: the generated `*_pb2_grpc` module of its typed API.
        typed_service: the typed service's name in that module, e.g. `VisionService`.
        typed_models: typed method -> the v2 model it serves (for metrics at the front).
        uses_torch: replicas set torch's thread count and may take GPUs.
    """

    name: str
    settings: type[ServiceSettings]
    builder: str
    typed_grpc: str
    typed_service: str
    typed_models: dict[str, str]
    uses_torch: bool

    def build(self, settings: ServiceSettings) -> Service:
        """Import the service's builder and build it."""
        module, _, function = self.builder.partition(":")
        build: Callable[[Any], Service] = getattr(importlib.import_module(module), function)
        return build(settings)

    @property
    def servicer_function(self) -> str:
        """Import path of the generated `add_<Service>Servicer_to_server` (Serve's gRPC proxy needs it)."""
        return f"{self.typed_grpc}.add_{self.typed_service}Servicer_to_server"


SERVICES: dict[str, HostedService] = {
    "tokenizer": HostedService(
        name="tokenizer",
        settings=TokenizerSettings,
        builder="services.tokenizer.servicer:build_service",
        typed_grpc="maas.tokenizer.v1.tokenizer_pb2_grpc",
        typed_service="TokenizerService",
        typed_models={"Tokenize": "tokenizer", "Detokenize": "tokenizer"},
        uses_torch=False,
    ),
    "vision": HostedService(
        name="vision",
        settings=VisionSettings,
        builder="services.vision.servicer:build_service",
        typed_grpc="maas.vision.v1.vision_pb2_grpc",
        typed_service="VisionService",
        typed_models={"ClassifyImage": "fashion_cnn"},
        uses_torch=True,
    ),
    "text": HostedService(
        name="text",
        settings=TextSettings,
        builder="services.text.servicer:build_service",
        typed_grpc="maas.text.v1.text_pb2_grpc",
        typed_service="TextService",
        typed_models={"ClassifyText": "review_lstm"},
        uses_torch=True,
    ),
    "transformer": HostedService(
        name="transformer",
        settings=TransformerSettings,
        builder="services.transformer.servicer:build_service",
        typed_grpc="maas.transformer.v1.transformer_pb2_grpc",
        typed_service="TransformerService",
        typed_models={"Embed": "minilm_embed", "ClassifyText": "minilm_sentiment"},
        uses_torch=True,
    ),
}
V2_SERVICER_FUNCTION = "maas.inference.grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"


def hosted(name: str) -> HostedService:
    """The hosted service called `name`.

    Raises:
        KeyError: the ray hosting does not run such a service.
    """
    if name not in SERVICES:
        raise KeyError(f"the ray hosting runs {', '.join(SERVICES)}; not {name!r}")
    return SERVICES[name]
