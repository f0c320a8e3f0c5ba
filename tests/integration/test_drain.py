"""A real `maas run echo-server` process: SIGTERM drains in-flight calls, and metrics over curl."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time

import grpc
import pytest

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from tests.conftest import free_port
from tests.integration.processes import maas_process

GRACE_SECONDS = 5.0
SLOW_MS = 1500


def slow_request(ms: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo", raw_input_contents=[b"\x01"])
    request.inputs.add(name="X", datatype="INT8", shape=[1])
    request.parameters["delay_ms"].int64_param = ms
    return request


async def test_sigterm_lets_in_flight_calls_finish_and_refuses_new_ones():
    env = {"MAAS_ECHO_DRAIN_GRACE_SECONDS": str(GRACE_SECONDS), "MAAS_ECHO_METRICS_PORT": "0"}
    async with maas_process("run", "echo-server", "--port", "0", ready="echo-server", env=env) as service:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            await stub.ServerReady(pb.ServerReadyRequest())
            in_flight = [asyncio.ensure_future(stub.ModelInfer(slow_request(SLOW_MS))) for _ in range(8)]
            await asyncio.sleep(0.3)
            service.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await asyncio.sleep(0.3)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ModelInfer(slow_request(0))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in refused.value.details()
            responses = await asyncio.gather(*in_flight)
            assert [r.model_name for r in responses] == ["echo"] * 8
            assert await asyncio.wait_for(service.process.wait(), GRACE_SECONDS) == 0
            assert time.monotonic() - signalled < GRACE_SECONDS
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as after:
                await stub.ServerLive(pb.ServerLiveRequest(), timeout=2)
            assert after.value.code() == grpc.StatusCode.UNAVAILABLE


def curl_counter(port: int) -> float:
    """The ModelInfer/echo/OK request counter, read with curl."""
    text = subprocess.run(
        ["curl", "-sf", f"http://127.0.0.1:{port}/metrics"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    ok = r'^maas_grpc_requests_total\{code="OK",method="ModelInfer",model="echo",version="1"\} (\S+)$'
    match = re.search(ok, text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_curl_of_the_metrics_port_shows_counters_moving():
    metrics_port = free_port()
    env = {"MAAS_ECHO_METRICS_PORT": str(metrics_port)}
    async with maas_process("run", "echo-server", "--port", "0", ready="echo-server", env=env) as service:
        before = curl_counter(metrics_port)
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(5):
                await stub.ModelInfer(slow_request(0))
        assert curl_counter(metrics_port) - before == 5
