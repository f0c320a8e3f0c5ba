"""Scoring reviews through gRPC as a client would: the tokenizer's v2 model, then a sentiment model."""

from __future__ import annotations

import grpc
import numpy as np

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.common.codec import Tensor, encode_inputs
from services.common.server import GrpcServer

CHUNK = 25


async def served_labels(
    tokenizer: GrpcServer, service: GrpcServer, texts: list[str], model: str, versions: list[str]
) -> dict[str, np.ndarray]:
    """Each version's predicted label index per text: ids from `tokenizer`, probabilities from `model`
    on `service`, CHUNK texts per call.

    Returns:
        Version -> predicted label index of every text, in order.
    """
    found: dict[str, list[np.ndarray]] = {version: [] for version in versions}
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{tokenizer.port}") as to_tokenizer,
        grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as to_service,
    ):
        tokenize = grpc_service_pb2_grpc.GRPCInferenceServiceStub(to_tokenizer)
        classify = grpc_service_pb2_grpc.GRPCInferenceServiceStub(to_service)
        for start in range(0, len(texts), CHUNK):
            request = pb.ModelInferRequest(model_name="tokenizer")
            chunk = np.array([t.encode() for t in texts[start : start + CHUNK]], dtype=object)
            encode_inputs(request, [Tensor("TEXT", "BYTES", chunk)])
            ids = await tokenize.ModelInfer(request)
            for version, predictions in found.items():
                forward = pb.ModelInferRequest(model_name=model, model_version=version)
                for tensor, data in zip(ids.outputs[:2], ids.raw_output_contents[:2], strict=True):
                    forward.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
                    forward.raw_input_contents.append(data)
                probabilities = await classify.ModelInfer(forward)
                rows = np.frombuffer(probabilities.raw_output_contents[0], "<f4").reshape(len(chunk), -1)
                predictions.append(rows.argmax(axis=1))
    return {version: np.concatenate(predictions) for version, predictions in found.items()}
