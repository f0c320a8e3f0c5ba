"""The default sentiment head (trained by `make test`/`make up`) scores through gRPC what its config records."""

from __future__ import annotations

import grpc
import numpy as np

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.common.codec import Tensor, encode_inputs
from services.common.repository import read_version, version_dirs
from services.common.settings import TokenizerSettings, TransformerSettings
from services.tokenizer.hosting import build_server as build_tokenizer
from services.transformer.hosting import build_server as build_transformer
from services.transformer.train import SERVING_CHECK, Recipe, reviews

CHUNK = 25


async def test_served_head_reproduces_its_recorded_accuracy_on_the_check_subset():
    repository = TransformerSettings().model_repository
    versions = version_dirs(repository, "minilm_sentiment")
    assert versions, f"no minilm_sentiment in {repository}: `make test` trains it first"
    config = read_version(repository / "minilm_sentiment" / versions[-1], "minilm_sentiment")
    if config.data["recipe"] == Recipe().__dict__:
        assert config.metrics["test_accuracy"] >= config.metrics["majority_baseline"] + 0.10
    texts, labels = reviews("testing_data")
    texts, labels = texts[:SERVING_CHECK], labels[:SERVING_CHECK]
    tokenizer = build_tokenizer(TokenizerSettings(port=0, metrics_port=0, model_repository=repository))
    transformer = build_transformer(TransformerSettings(port=0, metrics_port=0, model_repository=repository))
    await tokenizer.start()
    await transformer.start()
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{tokenizer.port}") as to_tokenizer,
            grpc.aio.insecure_channel(f"127.0.0.1:{transformer.port}") as to_transformer,
        ):
            tokenize = grpc_service_pb2_grpc.GRPCInferenceServiceStub(to_tokenizer)
            classify = grpc_service_pb2_grpc.GRPCInferenceServiceStub(to_transformer)
            predictions = []
            for start in range(0, len(texts), CHUNK):
                request = pb.ModelInferRequest(model_name="tokenizer")
                chunk = np.array([t.encode() for t in texts[start : start + CHUNK]], dtype=object)
                encode_inputs(request, [Tensor("TEXT", "BYTES", chunk)])
                ids = await tokenize.ModelInfer(request)
                forward = pb.ModelInferRequest(model_name="minilm_sentiment")
                for tensor, data in zip(ids.outputs[:2], ids.raw_output_contents[:2], strict=True):
                    forward.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
                    forward.raw_input_contents.append(data)
                probs = await classify.ModelInfer(forward)
                predictions.append(np.frombuffer(probs.raw_output_contents[0], "<f4").reshape(-1, 2).argmax(axis=1))
    finally:
        await transformer.stop()
        await tokenizer.stop()
    served = float((np.concatenate(predictions) == labels).mean())
    recorded = config.metrics[f"test_accuracy_first_{SERVING_CHECK}"]
    assert abs(served - recorded) <= 0.005, f"served {served:.3f}, recorded {recorded:.3f}"
