"""`google.rpc` error details, read with stock `grpcio-status` (`rpc_status.aio.from_call`): a RetryInfo on
refusals that invite a retry (rate limit, queue full, draining), a BadRequest naming the field on bad
input, the status message unchanged beside them, and a downstream's details passed through the gateway."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.common.auth import ApiKeys, KeyEntry
from services.common.batched import serve_model
from services.common.codec import Tensor, encode_inputs
from services.common.echo import echo_model
from services.common.model import Arrays
from services.common.server import GrpcServer
from services.common.settings import EchoSettings, ModelServiceSettings
from services.common.versions import ModelRegistry
from services.gateway.hosting import build_server
from services.gateway.spec import GatewaySettings
from tests.conftest import started
from tests.contract.linear_model import LinearModel, make_version
from tests.contract.test_repository import linear_request
from tests.traffic.replica import replica_echo

API_KEY = "a-test-key-of-enough-length"


async def _refusal(call) -> tuple[grpc.StatusCode, str, dict[str, object]]:
    """Await a call that must fail; its code, details, and its google.rpc details by type name."""
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    status = await rpc_status.aio.from_call(call)
    assert status is not None, "no google.rpc.Status in the trailing metadata"
    found: dict[str, object] = {}
    for detail in status.details:
        for kind in (error_details_pb2.RetryInfo, error_details_pb2.BadRequest):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.DESCRIPTOR.name] = message
    return await call.code(), await call.details(), found


def _echo(delay_ms: object = 0) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo")
    encode_inputs(request, [Tensor("X", "INT64", np.array([7], dtype=np.int64))])
    if isinstance(delay_ms, str):
        request.parameters["delay_ms"].string_param = delay_ms
    elif delay_ms:
        request.parameters["delay_ms"].int64_param = delay_ms
    return request


async def test_a_rate_limited_call_carries_retry_info_and_its_message_unchanged():
    auth = ApiKeys([KeyEntry(name="slow", key=API_KEY, rate_per_second=0.5, burst=1)])
    settings = EchoSettings(port=0, metrics_port=0)
    server = GrpcServer("echo-server", settings, ModelRegistry([echo_model()]), auth=auth)
    async with started(server), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = (("authorization", f"Bearer {API_KEY}"),)
        await stub.ModelInfer(_echo(), metadata=metadata)
        code, details, found = await _refusal(stub.ModelInfer(_echo(), metadata=metadata))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.startswith("API key 'slow' is over its rate limit of 0.5 calls/s (burst 1); retry in ")
    delay = found["RetryInfo"].retry_delay.ToTimedelta().total_seconds()
    assert 1.5 < delay <= 2.0
    assert f"retry in {delay:.3f} s" in details


async def test_a_draining_server_refuses_with_retry_info_of_zero():
    settings = EchoSettings(port=0, metrics_port=0)
    server = GrpcServer("echo-server", settings, ModelRegistry([echo_model()]))
    async with started(server), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(_echo())
        server.lifecycle.start_draining()
        code, details, found = await _refusal(stub.ModelInfer(_echo()))
    assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry on another replica")
    assert found["RetryInfo"].retry_delay.ToTimedelta().total_seconds() == 0
    assert "BadRequest" not in found


class GatedLinear(LinearModel):
    """The linear model whose executions wait for a gate, so its queue can be filled on purpose."""

    gate = threading.Event()

    def predict(self, batch: Arrays) -> Arrays:
        self.gate.wait(10)
        return super().predict(batch)


async def test_a_full_queue_refuses_with_retry_info(tmp_path: Path):
    make_version(tmp_path, 1, scale=1.0)
    model = serve_model(
        GatedLinear, ModelServiceSettings(model_repository=tmp_path, max_batch_size=1, max_queue_size=1)
    )
    settings = EchoSettings(port=0, metrics_port=0)
    GatedLinear.gate.clear()
    server = GrpcServer("linear", settings, ModelRegistry([model]))
    async with started(server), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        running = asyncio.ensure_future(stub.ModelInfer(linear_request(rows=1)))
        await asyncio.sleep(0.3)
        queued = asyncio.ensure_future(stub.ModelInfer(linear_request(rows=1)))
        await asyncio.sleep(0.3)
        code, details, found = await _refusal(stub.ModelInfer(linear_request(rows=1)))
        GatedLinear.gate.set()
        await asyncio.gather(running, queued)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details == "model 'linear' has 1 requests queued, its limit; retry shortly"
    assert found["RetryInfo"].retry_delay.ToTimedelta().total_seconds() > 0


@pytest.mark.parametrize(
    ("request_", "field", "words"),
    [
        (lambda: _echo("soon"), "parameters.delay_ms", "parameter 'delay_ms' must be an integer"),
        (
            lambda: pb.ModelInferRequest(
                model_name="echo", inputs=[pb.ModelInferRequest.InferInputTensor(name="X", datatype="FP99", shape=[1])]
            ),
            "inputs[X].datatype",
            "unknown datatype 'FP99'",
        ),
    ],
    ids=["parameter", "tensor"],
)
async def test_bad_input_carries_a_bad_request_naming_the_field(v2, request_, field: str, words: str):
    code, details, found = await _refusal(v2.ModelInfer(request_()))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and words in details
    (violation,) = found["BadRequest"].field_violations
    assert (violation.field, violation.description) == (field, details)
    assert "RetryInfo" not in found


async def test_the_gateway_passes_a_downstream_refusals_details_through(tmp_path: Path):
    settings = EchoSettings(port=0, metrics_port=0)
    async with started(GrpcServer("replica", settings, ModelRegistry([replica_echo("pool", ["1"])]))) as replica:
        routing = tmp_path / "routing.yaml"
        routing.write_text(
            f"targets: {{pool: {{endpoints: ['127.0.0.1:{replica.port}']}}}}\nmodels: {{pool: {{target: pool}}}}\n"
        )
        gateway_settings = GatewaySettings(port=0, metrics_port=0, routing_file=routing)
        async with (
            started(build_server(gateway_settings)) as gateway,
            grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
        ):
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = _echo("soon")
            request.model_name = "pool"
            code, details, found = await _refusal(stub.ModelInfer(request))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("parameter 'delay_ms' must be an integer")
    (violation,) = found["BadRequest"].field_violations
    assert (violation.field, violation.description) == ("parameters.delay_ms", details)
