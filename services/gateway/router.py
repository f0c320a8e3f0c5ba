"""The gateway's downstream side: one channel per routing target, calls routed by model name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from services.common.clients import Downstream
from services.common.codec import Tensor, decode_outputs, encode_inputs
from services.common.errors import ModelNotFound
from services.common.models import Parameter
from services.common.settings import GatewaySettings
from services.common.v2 import SERVICE_NAME as V2_SERVICE_NAME
from services.gateway.routing import Routing

S = TypeVar("S")
TOKENIZER = "tokenizer"


class Router:
    """Routes calls to the target serving each model, over one long-lived channel per target."""

    def __init__(self, routing: Routing, settings: GatewaySettings) -> None:
        self.routing = routing
        self.targets = {
            name: Downstream(name, target.address, settings.max_message_bytes, settings.default_timeout_seconds)
            for name, target in routing.targets.items()
        }

    def routes(self, model: str) -> bool:
        """True if the routing file routes `model`."""
        return self.routing.target_of(model) is not None

    def owner(self, model: str) -> Downstream:
        """The target serving `model`.

        Raises:
            ModelNotFound: the routing file does not route `model`.
        """
        target = self.routing.target_of(model)
        if target is None:
            raise ModelNotFound(
                f"model '{model}' is not routed by this gateway; routed models: {', '.join(self.routing.models)}"
            )
        return self.targets[target]

    async def v2(self, downstream: Downstream, method: str, request: Any) -> Any:
        """Call Open Inference Protocol `method` on `downstream`.

        Raises:
            DownstreamError: the call failed (status unchanged).
        """
        stub = downstream.stub(grpc_service_pb2_grpc.GRPCInferenceServiceStub)
        return await downstream.call(getattr(stub, method), request, f"/{V2_SERVICE_NAME}/{method}")

    async def typed(
        self, downstream: Downstream, stub_class: Callable[[Any], S], service: str, method: str, request: Any
    ) -> Any:
        """Call a typed RPC on `downstream` (see `owner`).

        Args:
            downstream: the target to call.
            stub_class: the generated stub class of the typed service.
            service: the typed service's full name, e.g. `maas.vision.v1.VisionService`.
            method: the RPC's name.
            request: the request message.

        Raises:
            DownstreamError: the call failed (status unchanged).
        """
        stub = downstream.stub(stub_class)
        return await downstream.call(getattr(stub, method), request, f"/{service}/{method}")

    async def infer(
        self, model: str, inputs: list[Tensor], version: str = "", parameters: dict[str, Parameter] | None = None
    ) -> dict[str, Tensor]:
        """Run v2 ModelInfer on `model` where it is served.

        Returns:
            Output name -> tensor.

        Raises:
            ModelNotFound: `model` is not routed.
            DownstreamError: the call failed (status unchanged).
        """
        request = v2pb.ModelInferRequest(model_name=model, model_version=version)
        encode_inputs(request, inputs)
        for key, value in (parameters or {}).items():
            _set_parameter(request.parameters[key], value)
        return decode_outputs(await self.v2(self.owner(model), "ModelInfer", request))

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

    async def close(self) -> None:
        """Close every channel."""
        for downstream in self.targets.values():
            await downstream.close()


def _set_parameter(parameter: v2pb.InferParameter, value: Parameter) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = value
