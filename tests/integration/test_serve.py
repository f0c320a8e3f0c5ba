"""`maas serve module:Class` as a user runs it: READY like `maas up`, routed by the gateway like any other
model, drained on SIGTERM, and hosted on Ray with `--runtime ray`."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import numpy as np
import pytest

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.gateway.hosting import build_server as build_gateway
from services.gateway.routing import ModelRoute, Routing, Target
from services.gateway.spec import GatewaySettings
from tests.conftest import free_port, started
from tests.contract.test_user_model import (
    EXAMPLE,
    NAME,
    REFERENCE,
    fashion_images,
    image_request,
    probabilities,
    reference,
    user_repository,
)
from tests.integration.processes import maas_process, run_failing

pytestmark = pytest.mark.slow
__all__ = ["fashion_images", "user_repository"]


def serve_args(repository: Path, *extra: str) -> list[str]:
    return ["serve", REFERENCE, "--repository", str(repository), "--app-dir", str(EXAMPLE), "--port", "0", *extra]


async def test_maas_serve_is_ready_routed_by_the_gateway_and_drains_on_sigterm(
    user_repository: Path, fashion_images: np.ndarray
):
    env = {"MAAS_FASHION_LINEAR_METRICS_PORT": "0", "MAAS_FASHION_LINEAR_DRAIN_GRACE_SECONDS": "3"}
    async with maas_process(*serve_args(user_repository), ready=NAME, env=env) as served:
        assert served.address.startswith("127.0.0.1:")
        routing = Routing(
            targets={"mine": Target(address=f"dns:///{served.address}")}, models={NAME: ModelRoute(target="mine")}
        )
        gateway = build_gateway(GatewaySettings(port=0, metrics_port=0), routing)
        async with (
            started(gateway),
            grpc.aio.insecure_channel(served.address) as direct_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as gateway_channel,
        ):
            direct = grpc_service_pb2_grpc.GRPCInferenceServiceStub(direct_channel)
            via = grpc_service_pb2_grpc.GRPCInferenceServiceStub(gateway_channel)
            expected = reference(user_repository, "1", fashion_images[:8])
            for stub in (direct, via):
                response = await stub.ModelInfer(image_request(fashion_images[:8]))
                assert (response.model_name, response.model_version) == (NAME, "1")
                np.testing.assert_allclose(probabilities(response), expected, atol=1e-6)
            metadata = await via.ModelMetadata(pb.ModelMetadataRequest(name=NAME))
            assert list(metadata.versions) == ["1", "2"]
            index = await via.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
            assert {(m.name, m.version) for m in index.models if m.name == NAME} == {(NAME, "1"), (NAME, "2")}
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.process.wait(), 30) == 0


async def test_a_class_that_is_not_a_model_is_refused_with_one_clear_line(tmp_path: Path):
    args = ["serve", "fashion_linear.train:LABELS", "--app-dir", str(EXAMPLE), "--repository", str(tmp_path)]
    _, stderr = await run_failing(*args, env={})
    assert b"is not a model class: it has no name, inputs, outputs, load, predict" in stderr
    assert b"Traceback" not in stderr


@pytest.mark.ray
async def test_maas_serve_hosts_the_model_on_ray(user_repository: Path, fashion_images: np.ndarray):
    env = {
        "MAAS_RAY_GRPC_PORT": str(free_port()),
        "MAAS_RAY_HTTP_PORT": str(free_port()),
        "MAAS_RAY_NATIVE_PROXY": "false",
        "MAAS_RAY_MAX_REPLICAS": "1",
        "MAAS_FASHION_LINEAR_METRICS_PORT": "0",
    }
    async with maas_process(*serve_args(user_repository, "--runtime", "ray"), ready=NAME, env=env) as served:
        async with grpc.aio.insecure_channel(served.address) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            response = await stub.ModelInfer(image_request(fashion_images[:4], version="2"))
            assert response.model_version == "2"
            np.testing.assert_allclose(
                probabilities(response), reference(user_repository, "2", fashion_images[:4]), atol=1e-6
            )
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.process.wait(), 60) == 0
