"""The worked user model (docs/examples/fashion_linear), a class outside services/, served by the same
runtime as the built-in models under both hostings: v2, versions, batching, statistics, metrics,
tracing and bad input answered as the contract says."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from safetensors.numpy import load_file

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.common import telemetry
from services.common.codec import Tensor, encode_inputs
from services.common.server import GrpcServer, build_server
from services.common.spec import ServiceSpec, import_object, user_spec
from tests.conftest import REPO_ROOT, started
from tests.contract.test_repository import metric
from tests.contract.test_v2_echo import assert_status

EXAMPLE = REPO_ROOT / "docs" / "examples" / "fashion_linear"
REFERENCE = "fashion_linear.model:SoftmaxRegression"
NAME = "fashion-linear"
TRAIN_IMAGES = 6000


def example_spec() -> ServiceSpec:
    """The example's spec, as `maas serve fashion_linear.model:SoftmaxRegression --app-dir EXAMPLE` makes it."""
    return user_spec(REFERENCE, app_dir=str(EXAMPLE))


@pytest.fixture(scope="module")
def user_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two versions of the example, fitted for one and two epochs; both served, version 1 by default."""
    train = import_object("fashion_linear.train:train", str(EXAMPLE))
    repository = tmp_path_factory.mktemp("user_repository")
    for epochs in (1, 2):
        train(repository, epochs=epochs, train_limit=TRAIN_IMAGES)
    (repository / NAME / "model.json").write_text(json.dumps({"version_policy": "all", "default_version": "1"}))
    return repository


@pytest.fixture(scope="module")
def fashion_images() -> np.ndarray:
    """The first 64 Fashion-MNIST test images, [64, 784] in [0, 1]."""
    images, _ = import_object("fashion_linear.train:load_split", str(EXAMPLE))("test")
    return images[:64]


def settings_of(spec: ServiceSpec, repository: Path):
    """Test settings: a free port, batches of up to 16 that wait up to 20 ms for the callers of the last one."""
    return spec.read_settings(
        port=0, metrics_port=0, model_repository=repository, max_batch_size=16, max_queue_delay_ms=20
    )


@pytest.fixture(scope="module")
def user_ray_app(ray_cluster, user_repository: Path) -> dict:
    """The example deployed as its own Serve application on the session's Ray."""
    from ray import serve

    from services.ray import cluster

    spec = example_spec()
    handles = cluster.deploy([(spec, settings_of(spec, user_repository))], ray_cluster)
    yield handles
    serve.delete(spec.name)


@pytest.fixture
async def user_server(user_repository: Path, hosting: str, request: pytest.FixtureRequest) -> AsyncIterator[GrpcServer]:
    """The example on a free port under each hosting."""
    spec = example_spec()
    settings = settings_of(spec, user_repository)
    if hosting == "grpc":
        server = build_server(spec, settings)
    else:
        from services.ray.front import RayFront

        handles = request.getfixturevalue("user_ray_app")
        server = RayFront(spec, settings, handles[NAME], request.getfixturevalue("ray_cluster"))
    async with started(server) as running:
        yield running


@pytest.fixture
async def v2(user_server: GrpcServer) -> AsyncIterator[grpc_service_pb2_grpc.GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{user_server.port}") as channel:
        yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


def image_request(images: np.ndarray, version: str = "", datatype: str = "FP32") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=NAME, model_version=version)
    encode_inputs(request, [Tensor("IMAGE", datatype, images)])
    return request


def probabilities(response: pb.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(response.outputs[0].shape))


def reference(repository: Path, version: str, images: np.ndarray) -> np.ndarray:
    """What the class computes in-process from the version's weights."""
    model = import_object(REFERENCE, str(EXAMPLE))
    tensors = load_file(str(repository / NAME / version / "weights.safetensors"))
    return model(tensors["weights"], tensors["bias"]).predict({"IMAGE": images})["PROBABILITIES"]


async def test_health_readiness_and_metadata(v2, user_server: GrpcServer):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{user_server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            status = (await health.Check(health_pb2.HealthCheckRequest(service=service))).status
            assert status == health_pb2.HealthCheckResponse.SERVING
    assert (await v2.ServerReady(pb.ServerReadyRequest())).ready
    assert (await v2.ModelReady(pb.ModelReadyRequest(name=NAME))).ready
    metadata = await v2.ModelMetadata(pb.ModelMetadataRequest(name=NAME))
    assert (metadata.name, list(metadata.versions), metadata.platform) == (NAME, ["1", "2"], "numpy_safetensors")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("IMAGE", "FP32", [-1, 784])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [("PROBABILITIES", "FP32", [-1, 10])]


async def test_answers_what_the_class_computes_for_every_version(v2, user_repository: Path, fashion_images: np.ndarray):
    default = await v2.ModelInfer(image_request(fashion_images))
    assert default.model_version == "1", "model.json names version 1 the default"
    for version in ("1", "2"):
        response = await v2.ModelInfer(image_request(fashion_images, version))
        assert response.model_version == version
        np.testing.assert_allclose(
            probabilities(response), reference(user_repository, version, fashion_images), atol=1e-6
        )
    one, two = (reference(user_repository, v, fashion_images) for v in ("1", "2"))
    assert not np.allclose(one, two), "each version computes with its own weights"


CALLERS, CALLS_EACH = 16, 8
BLOCKER_COPIES = 16
"""The first call carries 16 copies of the 64 test images (1,024 rows): the callers' first requests queue
while it runs, however fast the machine answers one row."""


async def test_concurrent_requests_batch_and_each_gets_its_own_rows(v2, user_repository: Path, fashion_images):
    before = (await v2.ModelStatistics(pb.ModelStatisticsRequest(name=NAME, version="1"))).model_stats[0]
    expected = reference(user_repository, "1", fashion_images[:CALLERS])
    blocker = np.tile(fashion_images, (BLOCKER_COPIES, 1))

    async def caller(row: int) -> None:
        for _ in range(CALLS_EACH):
            response = await v2.ModelInfer(image_request(fashion_images[row : row + 1]))
            np.testing.assert_allclose(probabilities(response), expected[row : row + 1], atol=1e-6)

    first = asyncio.ensure_future(v2.ModelInfer(image_request(blocker)))
    await asyncio.gather(first, *(caller(row) for row in range(CALLERS)))
    np.testing.assert_allclose(probabilities(first.result()), reference(user_repository, "1", blocker), atol=1e-6)
    after = (await v2.ModelStatistics(pb.ModelStatisticsRequest(name=NAME, version="1"))).model_stats[0]
    calls = CALLERS * CALLS_EACH
    assert after.inference_count - before.inference_count == calls + len(blocker)
    assert after.execution_count - before.execution_count < calls + 1, "requests shared executions"
    assert max(b.batch_size for b in after.batch_stats if b.batch_size <= CALLERS) > 1


BAD = {
    "a wrong datatype": (lambda x: image_request(x.astype(np.float64), datatype="FP64"), "INVALID_ARGUMENT", "FP32"),
    "a wrong shape": (lambda x: image_request(x.reshape(-1, 28, 28)), "INVALID_ARGUMENT", "shape [-1, 784]"),
    "pixels out of range": (lambda x: image_request(x * 255), "INVALID_ARGUMENT", "[0, 1]"),
    "NaN": (lambda x: image_request(np.full_like(x, np.nan)), "INVALID_ARGUMENT", "[0, 1]"),
    "no images": (lambda x: image_request(x[:0]), "INVALID_ARGUMENT", "no images"),
    "too many images": (lambda x: image_request(np.zeros((1025, 784), np.float32)), "RESOURCE_EXHAUSTED", "1024"),
    "an unknown version": (lambda x: image_request(x, version="7"), "NOT_FOUND", "no version '7'"),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_input_gets_its_status_and_the_model_keeps_serving(v2, fashion_images, case):
    build, code, fragment = BAD[case]
    await assert_status(v2.ModelInfer(build(fashion_images[:2])), grpc.StatusCode[code], fragment)
    assert probabilities(await v2.ModelInfer(image_request(fashion_images[:1]))).shape == (1, 10)


async def test_stream_infer_answers_each_request_in_order(v2, fashion_images):
    requests = [
        image_request(fashion_images[:1]),
        image_request(fashion_images[:1] * 255),
        image_request(fashion_images[1:3]),
    ]
    responses = [r async for r in v2.ModelStreamInfer(iter(requests))]
    assert [r.error_message == "" for r in responses] == [True, False, True]
    assert "[0, 1]" in responses[1].error_message
    assert probabilities(responses[2].infer_response).shape == (2, 10)


@pytest.mark.parametrize("hosting", ["grpc"])
async def test_batch_metrics_and_a_trace_span_name_the_model(v2, user_server: GrpcServer, fashion_images):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.install(provider)
    try:
        await v2.ModelInfer(image_request(fashion_images[:2]))
    finally:
        telemetry.shutdown()
    (span,) = [s for s in exporter.get_finished_spans() if s.name.endswith("/ModelInfer")]
    assert span.attributes["maas.model"] == NAME and span.attributes["maas.batch_size"] == 2
    port = user_server.metrics_port
    assert metric(port, f'maas_batch_size_count{{model="{NAME}",version="2"}}') >= 1
    assert metric(port, f'maas_model_version_device{{device="cpu",model="{NAME}",version="2"}}') == 1.0
