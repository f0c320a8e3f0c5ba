"""ONNX versions of the four exportable models, served on ONNX Runtime under both hostings, beside their torch
source: parity with it through gRPC, the platform each version reports, and hostile-input refusals. The
vision, text and transformer contract suites run with these ONNX versions as the served defaults too
(their `platform` fixture)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import grpc
import numpy as np
import pytest

from maas.common.v1 import common_pb2
from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from maas.text.v1 import text_pb2, text_pb2_grpc
from maas.transformer.v1 import transformer_pb2, transformer_pb2_grpc
from services.common.repository import read_version, version_dirs
from services.tokenizer.model import newest_tokenizer
from services.vision.data import load_split
from tests.conftest import MODEL_SERVICES, Served, hosted
from tests.contract.test_transformer import TEXTS, output, sequence_request
from tests.contract.test_v2_echo import assert_status
from tests.contract.test_vision import image_request

MODELS = ("fashion_cnn", "review_lstm", "minilm_embed", "minilm_sentiment")


@pytest.fixture
def platform() -> str:
    """The model services here serve the ONNX repository."""
    return "onnx"


@pytest.fixture
async def channels(served: Served, hosting: str, request: pytest.FixtureRequest) -> AsyncIterator[dict]:
    """A channel to each model service over the ONNX repository, under each hosting."""
    async with AsyncExitStack() as stack:
        opened = {}
        for name in MODEL_SERVICES:
            running = await stack.enter_async_context(
                hosted(name, hosting, served.repository, request, served.ray_apps)
            )
            opened[name] = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{running.port}"))
        yield opened


def v2_stub(channels: dict, model: str) -> grpc_service_pb2_grpc.GRPCInferenceServiceStub:
    service = "vision" if model == "fashion_cnn" else "text" if model == "review_lstm" else "transformer"
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channels[service])


@pytest.fixture(scope="module")
def inputs(onnx_repository: dict) -> dict:
    """Real inputs: 64 test images, and TEXTS tokenized by the repository's tokenizer."""
    images, _ = load_split("test")
    ids, mask, _ = newest_tokenizer(onnx_repository["repository"]).encode_arrays(TEXTS)
    return {"images": images[:64], "ids": ids, "mask": mask}


def pinned(model: str, inputs: dict, version: str) -> v2pb.ModelInferRequest:
    if model == "fashion_cnn":
        return image_request(inputs["images"], version=version)
    request = sequence_request(model, inputs["ids"], inputs["mask"])
    request.model_version = version
    return request


async def test_onnx_versions_match_their_torch_source_through_grpc(channels, onnx_repository, inputs):
    for model, (source, exported) in onnx_repository["versions"].items():
        v2 = v2_stub(channels, model)
        torch_response, onnx_response = await asyncio.gather(
            v2.ModelInfer(pinned(model, inputs, source)), v2.ModelInfer(pinned(model, inputs, exported))
        )
        assert (torch_response.model_version, onnx_response.model_version) == (source, exported)
        expected, answered = output(torch_response), output(onnx_response)
        if model == "minilm_embed":
            norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(answered, axis=1)
            cosines = (expected * answered).sum(1) / norms
            assert cosines.min() >= 0.9999, (model, cosines)
        else:
            assert np.abs(expected - answered).max() <= 1e-4, model
            assert (expected.argmax(1) == answered.argmax(1)).all(), model
        recorded = read_version(onnx_repository["repository"] / model / exported, model).metrics
        assert recorded["max_abs_diff"] <= 1e-4 and recorded["parity_examples"] > 0


async def test_each_version_reports_its_own_platform(channels, onnx_repository):
    for model, (source, exported) in onnx_repository["versions"].items():
        v2 = v2_stub(channels, model)
        default = await v2.ModelMetadata(v2pb.ModelMetadataRequest(name=model))
        torch_version = await v2.ModelMetadata(v2pb.ModelMetadataRequest(name=model, version=source))
        assert (default.platform, torch_version.platform) == ("onnxruntime", "pytorch_safetensors"), model
        assert set(default.versions) == set(version_dirs(onnx_repository["repository"], model))
        config = (await v2.ModelConfig(v2pb.ModelConfigRequest(name=model, version=exported))).config
        assert config.platform == "onnxruntime" and config.max_batch_size == 32
        assert config.WhichOneof("scheduling_choice") == "dynamic_batching"


async def test_hostile_input_to_onnx_versions_is_refused_as_for_torch_versions(channels, onnx_repository, inputs):
    for model, (_, exported) in onnx_repository["versions"].items():
        if model == "fashion_cnn":
            lying = image_request(inputs["images"][:1], version=exported)
            lying.inputs[0].shape[0] = 1 << 20
        else:
            lying = pinned(model, inputs, exported)
            lying.inputs[0].shape[:] = [1 << 20, 1 << 9]
        refused = v2_stub(channels, model).ModelInfer(lying)
        await assert_status(refused, grpc.StatusCode.INVALID_ARGUMENT, "bytes of raw data, got")
    items = [common_pb2.TokenizedText(input_ids=[101, 102])] * 7
    items.append(common_pb2.TokenizedText(input_ids=np.full(2_000_000, 1000).tolist()))
    transformer = transformer_pb2_grpc.TransformerServiceStub(channels["transformer"])
    for call in (
        text_pb2_grpc.TextServiceStub(channels["text"]).ClassifyText(text_pb2.ClassifyTextRequest(items=items)),
        transformer.Embed(transformer_pb2.EmbedRequest(items=items)),
        transformer.ClassifyText(transformer_pb2.ClassifyTextRequest(items=items)),
    ):
        await assert_status(call, grpc.StatusCode.INVALID_ARGUMENT, "items[7] has 2000000 tokens; at most 512")
    for model in MODELS:
        assert output(await v2_stub(channels, model).ModelInfer(pinned(model, inputs, ""))).shape[0] > 0
