"""The pruned vision model (`maas train vision --prune 0.5`, made by `make test`/`make up`): smaller tensors,
at least 40% fewer multiply-adds, at least 90% test accuracy, and served over gRPC it scores what it records."""

from __future__ import annotations

import grpc
import numpy as np
from safetensors import safe_open

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.common.repository import read_version, version_dirs
from services.common.server import build_server
from services.vision.data import load_split
from services.vision.model import WEIGHTS_FILE, multiply_adds
from services.vision.recipe import Recipe
from services.vision.spec import MODEL_NAME, SPEC, VisionSettings


async def test_the_pruned_cnn_is_smaller_keeps_its_accuracy_and_serves_what_it_records():
    repository = VisionSettings().model_repository
    configs = [read_version(repository / MODEL_NAME / v, MODEL_NAME) for v in version_dirs(repository, MODEL_NAME)]
    pruned = [c for c in configs if "pruned_from" in c.data]
    assert pruned, f"no pruned {MODEL_NAME} in {repository}: `make test` makes it (maas train vision --prune 0.5)"
    config = pruned[-1]
    source = next(c for c in configs if f"{MODEL_NAME}/{c.version}" == config.data["pruned_from"])
    directory = repository / MODEL_NAME / str(config.version)
    with (
        safe_open(directory / WEIGHTS_FILE, "np") as pruned_file,
        safe_open(repository / MODEL_NAME / str(source.version) / WEIGHTS_FILE, "np") as source_file,
    ):
        for name in ("features.1.0.weight", "classifier.2.weight"):
            assert pruned_file.get_slice(name).get_shape()[0] < source_file.get_slice(name).get_shape()[0], name
        for name, dimension in (("classifier.2.weight", 1), ("classifier.5.weight", 1)):
            pruned_shape, source_shape = (
                pruned_file.get_slice(name).get_shape(),
                source_file.get_slice(name).get_shape(),
            )
            assert pruned_shape[dimension] < source_shape[dimension], name
    hyperparameters = config.architecture["hyperparameters"]
    removed = 1 - multiply_adds(hyperparameters) / multiply_adds(source.architecture["hyperparameters"])
    assert removed == config.metrics["multiply_adds_removed"] >= 0.40
    if source.data["recipe"] == Recipe().__dict__ and config.data["pruning"].startswith("structured, 50%"):
        assert config.metrics["test_accuracy"] >= 0.90, config.metrics
    images, labels = load_split("test")
    server = build_server(SPEC, VisionSettings(port=0, metrics_port=0, model_repository=repository, max_images=1024))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            load = pb.RepositoryModelLoadRequest(model_name=MODEL_NAME)
            load.parameters["version"].string_param = str(config.version)
            await stub.RepositoryModelLoad(load)
            predictions = []
            for start in range(0, len(images), 1000):
                request = pb.ModelInferRequest(model_name=MODEL_NAME, model_version=str(config.version))
                request.inputs.add(name="IMAGE", datatype="FP32", shape=[1000, 1, 28, 28])
                request.raw_input_contents.append(images[start : start + 1000].tobytes())
                response = await stub.ModelInfer(request, timeout=60)
                predictions.append(np.frombuffer(response.raw_output_contents[0], "<f4").reshape(-1, 10).argmax(1))
    finally:
        await server.stop()
    served = float((np.concatenate(predictions) == labels).mean())
    assert abs(served - config.metrics["test_accuracy"]) <= 0.001, (served, config.metrics["test_accuracy"])
