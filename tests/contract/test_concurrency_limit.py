"""`MAX_CONCURRENT_RPCS`: calls past the limit are refused by gRPC before any handler runs, and the
server serves again once calls in flight end."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.common.codec import Tensor, encode_inputs
from services.common.echo import echo_model
from services.common.server import GrpcServer
from services.common.settings import EchoSettings
from services.common.versions import ModelRegistry
from tests.conftest import started


def _echo(delay_ms: int = 0) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo")
    encode_inputs(request, [Tensor("X", "INT64", np.array([7], dtype=np.int64))])
    if delay_ms:
        request.parameters["delay_ms"].int64_param = delay_ms
    return request


async def test_calls_past_max_concurrent_rpcs_are_refused_and_served_again_after():
    server = GrpcServer(
        "echo-server", EchoSettings(port=0, metrics_port=0, max_concurrent_rpcs=1), ModelRegistry([echo_model()])
    )
    async with started(server), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        slow = asyncio.ensure_future(stub.ModelInfer(_echo(delay_ms=500)))
        await asyncio.sleep(0.2)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ModelInfer(_echo())
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert not slow.done()
        assert (await slow).outputs[0].name
        assert (await stub.ModelInfer(_echo())).outputs[0].name
