"""The default vision model (trained by `make test`/`make up`) served over gRPC scores what its config records."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.common.repository import read_version, version_dirs
from services.common.server import build_server
from services.vision.data import load_split
from services.vision.recipe import Recipe
from services.vision.spec import SPEC, VisionSettings

CHUNK = 500


async def test_served_default_model_reproduces_its_recorded_test_accuracy():
    repository = VisionSettings().model_repository
    versions = version_dirs(repository, "fashion_cnn")
    assert versions, f"no fashion_cnn in {repository}: `make test` trains it first (maas train vision --if-missing)"
    newest = versions[-1]
    config = read_version(repository / "fashion_cnn" / newest, "fashion_cnn")
    recorded = config.metrics["test_accuracy"]
    if config.data["recipe"] == Recipe().__dict__:
        assert recorded >= 0.90, f"the default recipe promises 90% test accuracy, version {newest} recorded {recorded}"
    images, labels = load_split("test")
    server = build_server(SPEC, VisionSettings(port=0, metrics_port=0, model_repository=repository))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)

            async def classify(start: int) -> np.ndarray:
                request = pb.ModelInferRequest(model_name="fashion_cnn", model_version=newest)
                request.inputs.add(name="IMAGE", datatype="FP32", shape=[CHUNK, 1, 28, 28])
                request.raw_input_contents.append(images[start : start + CHUNK].tobytes())
                response = await stub.ModelInfer(request)
                return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(CHUNK, 10).argmax(axis=1)

            predictions = np.concatenate(await asyncio.gather(*(classify(s) for s in range(0, len(images), CHUNK))))
    finally:
        await server.stop()
    served = float((predictions == labels).mean())
    assert abs(served - recorded) <= 0.001, f"served {served:.4f}, recorded {recorded:.4f}"
