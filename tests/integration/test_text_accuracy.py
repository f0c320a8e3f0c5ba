"""The default review LSTM and its int8 version (made by `make test`/`make up`) score through gRPC
what their configs record, side by side in one server."""

from __future__ import annotations

import grpc

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.common.repository import read_version, version_dirs
from services.common.reviews import reviews
from services.common.server import build_server
from services.text.recipe import Recipe
from services.text.spec import MODEL_NAME, TextSettings
from services.text.spec import SPEC as TEXT
from services.text.train import SERVING_CHECK
from services.tokenizer.spec import SPEC as TOKENIZER
from services.tokenizer.spec import TokenizerSettings
from tests.integration.reviews import served_labels

# int8 quantizes activations with one scale per batch: served batches differ from the evaluation's,
# which may flip a review on the edge.
TOLERANCE = {None: 0.005, "dynamic_int8": 0.01}


async def test_served_lstm_and_int8_reproduce_their_recorded_accuracy_on_the_check_subset():
    repository = TextSettings().model_repository
    configs = [read_version(repository / MODEL_NAME / v, MODEL_NAME) for v in version_dirs(repository, MODEL_NAME)]
    int8 = [c for c in configs if c.quantization == "dynamic_int8"]
    assert int8, f"no int8 {MODEL_NAME} in {repository}: `make test` makes it first"
    quantized = int8[-1]
    source = next(c for c in configs if f"{MODEL_NAME}/{c.version}" == quantized.data["quantized_from"])
    if source.data["recipe"] == Recipe().__dict__:
        assert source.metrics["test_accuracy"] >= source.metrics["majority_baseline"] + 0.08
    assert quantized.metrics["fp32_test_accuracy"] == source.metrics["test_accuracy"]
    assert abs(quantized.metrics["test_accuracy"] - source.metrics["test_accuracy"]) <= 0.01
    texts, labels = reviews("testing_data")
    texts, labels = texts[:SERVING_CHECK], labels[:SERVING_CHECK]
    tokenizer = build_server(TOKENIZER, TokenizerSettings(port=0, metrics_port=0, model_repository=repository))
    text = build_server(TEXT, TextSettings(port=0, metrics_port=0, model_repository=repository))
    await tokenizer.start()
    await text.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{text.port}") as channel:
            for config in (source, quantized):
                load = pb.RepositoryModelLoadRequest(model_name=MODEL_NAME)
                load.parameters["version"].string_param = str(config.version)
                await grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(load)
        versions = [str(source.version), str(quantized.version)]
        predictions = await served_labels(tokenizer, text, texts, MODEL_NAME, versions)
    finally:
        await text.stop()
        await tokenizer.stop()
    for config in (source, quantized):
        served = float((predictions[str(config.version)] == labels).mean())
        recorded = config.metrics[f"test_accuracy_first_{SERVING_CHECK}"]
        tolerance = TOLERANCE[config.quantization]
        assert abs(served - recorded) <= tolerance, f"version {config.version}: served {served}, recorded {recorded}"
