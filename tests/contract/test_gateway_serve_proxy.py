"""The gateway in front of Ray Serve's own gRPC proxy, as the chart's `rayservice` runtime wires it:
one target per Serve application, each call carrying the `application` metadata the proxy routes by."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from maas.gateway.v1 import gateway_pb2 as pb
from maas.gateway.v1 import gateway_pb2_grpc
from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from maas.tokenizer.v1 import tokenizer_pb2
from services.common.codec import Tensor, decode_outputs, encode_inputs
from services.gateway.hosting import build_server
from services.gateway.routing import Routing
from services.gateway.spec import GatewaySettings
from tests.conftest import started

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MODELS = {
    "tokenizer": ["tokenizer"],
    "vision": ["fashion_cnn"],
    "text": ["review_lstm"],
    "transformer": ["minilm_embed", "minilm_sentiment"],
}


async def test_the_gateway_reaches_every_model_through_serves_grpc_proxy(ray_cluster, ray_apps):
    proxy = f"dns:///127.0.0.1:{ray_cluster.grpc_port}"
    routing = Routing.model_validate(
        {
            "targets": {app: {"address": proxy, "metadata": {"application": app}} for app in MODELS},
            "models": {model: {"target": app} for app, models in MODELS.items() for model in models},
        }
    )
    settings = GatewaySettings(port=0, metrics_port=0, default_text_model="lstm")
    async with (
        started(build_server(settings, routing)) as gateway,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
    ):
        typed = gateway_pb2_grpc.GatewayServiceStub(channel)
        tokens = await typed.Tokenize(tokenizer_pb2.TokenizeRequest(texts=["through the proxy"]))
        assert tokens.encodings[0].tokens == ["[CLS]", "through", "the", "proxy", "[SEP]"]
        for model in (pb.TEXT_MODEL_LSTM, pb.TEXT_MODEL_TRANSFORMER):
            answer = await typed.ClassifyText(pb.ClassifyTextRequest(texts=["Great taffy."], model=model))
            assert answer.model == model and sum(label.probability for label in answer.results[0].labels) > 0.999
        embedded = await typed.Embed(pb.EmbedRequest(texts=["A man is eating food."]))
        assert np.linalg.norm(embedded.embeddings[0].values) == pytest.approx(1.0, abs=1e-4)
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = v2pb.ModelInferRequest(model_name="fashion_cnn")
        encode_inputs(request, [Tensor("IMAGE", "FP32", np.zeros((2, 1, 28, 28), dtype=np.float32))])
        probabilities = decode_outputs(await v2.ModelInfer(request))["PROBABILITIES"].array
        assert probabilities.shape == (2, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
        bad = v2pb.ModelInferRequest(model_name="fashion_cnn")
        encode_inputs(bad, [Tensor("IMAGE", "FP32", np.full((1, 1, 28, 28), 2.0, dtype=np.float32))])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await v2.ModelInfer(bad)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "IMAGE values must lie in [0, 1]" in refused.value.details()
