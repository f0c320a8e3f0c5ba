"""ONNX versions of the four exportable models, served on ONNX Runtime under both hostings: parity with
their torch source through gRPC, the platform each version reports, the same bad-input contract and
hostile-input refusals, typed APIs and batching. The repository's default version of each model is its
ONNX version."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import numpy as np
import pytest

from maas.common.v1 import common_pb2
from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from maas.text.v1 import text_pb2, text_pb2_grpc
from maas.transformer.v1 import transformer_pb2, transformer_pb2_grpc
from maas.vision.v1 import vision_pb2, vision_pb2_grpc
from services.common.repository import MODEL_FILE, ModelFile, read_version, version_dirs
from services.tokenizer.model import newest_tokenizer
from services.vision.data import load_split
from tests.conftest import SETTINGS, started
from tests.contract.test_transformer import BAD, TEXTS, output, sequence_request
from tests.contract.test_v2_echo import assert_status
from tests.contract.test_vision import BAD_V2, image_request

SERVICES = ("vision", "text", "transformer")
SEQUENCE_MODELS = ("review_lstm", "minilm_embed", "minilm_sentiment")
MODELS = ("fashion_cnn", *SEQUENCE_MODELS)


def _link_or_copy(source: str, target: str) -> None:
    """Hard-link weights; copy `model.json`, which exporting rewrites in place."""
    if os.path.basename(source) == MODEL_FILE:
        shutil.copy2(source, target)
    else:
        os.link(source, target)


@pytest.fixture(scope="session")
def onnx_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The test repository with each exportable model exported to ONNX (parity measured on a few test
    inputs), every version served and the ONNX one the default.

    Returns:
        `repository` (its root), and model -> (torch source version, ONNX version).
    """
    from services.text.train import export_onnx as export_text
    from services.transformer.train import export_embed_onnx, export_sentiment_onnx
    from services.vision.train import export_onnx as export_vision

    repository = tmp_path_factory.mktemp("onnx") / "repository"
    shutil.copytree(model_repository, repository, copy_function=_link_or_copy)
    published = {
        "fashion_cnn": export_vision(repository, test_limit=500),
        "review_lstm": export_text(repository, test_limit=64),
        "minilm_embed": export_embed_onnx(repository, test_limit=16),
        "minilm_sentiment": export_sentiment_onnx(repository, test_limit=16),
    }
    versions = {}
    for model, directory in published.items():
        source = read_version(directory, model).data["exported_from"].rpartition("/")[2]
        versions[model] = (source, directory.name)
        model_file = ModelFile(version_policy="all", default_version=directory.name)
        (repository / model / MODEL_FILE).write_text(model_file.model_dump_json(), encoding="utf-8")
    return {"repository": repository, "versions": versions}


@pytest.fixture(scope="module")
def onnx_ray_apps(ray_cluster, onnx_repository: dict) -> Iterator[dict]:
    """The vision, text and transformer Serve applications over the ONNX repository, beside the session's own;
    deleted after this module, so their replicas' logical CPUs go back to the session's Ray."""
    from ray import serve

    from services.catalog import SERVICES as CATALOG
    from services.ray import cluster

    apps = [
        (dataclasses.replace(CATALOG[name], name=f"{name}-onnx"), SETTINGS[name](onnx_repository["repository"]))
        for name in SERVICES
    ]
    handles = cluster.deploy(apps, ray_cluster)
    yield {name: (spec, settings, handles[spec.name]) for name, (spec, settings) in zip(SERVICES, apps, strict=True)}
    for spec, _ in apps:
        serve.delete(spec.name)


@pytest.fixture
async def channels(onnx_repository: dict, hosting: str, request: pytest.FixtureRequest) -> AsyncIterator[dict]:
    """A channel to each model service over the ONNX repository, under each hosting."""
    from services.catalog import SERVICES as CATALOG
    from services.common.server import build_server

    async with AsyncExitStack() as stack:
        opened = {}
        for name in SERVICES:
            if hosting == "grpc":
                server = build_server(CATALOG[name], SETTINGS[name](onnx_repository["repository"]))
            else:
                from services.ray.front import RayFront

                spec, settings, handle = request.getfixturevalue("onnx_ray_apps")[name]
                server = RayFront(spec, settings, handle, request.getfixturevalue("ray_cluster"))
            running = await stack.enter_async_context(started(server))
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
        expected, served = output(torch_response), output(onnx_response)
        if model == "minilm_embed":
            cosines = (expected * served).sum(1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(served, axis=1)
            assert cosines.min() >= 0.9999, (model, cosines)
        else:
            assert np.abs(expected - served).max() <= 1e-4, model
            assert (expected.argmax(1) == served.argmax(1)).all(), model
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


async def test_bad_input_to_an_onnx_version_gets_the_documented_status(channels, inputs):
    vision = v2_stub(channels, "fashion_cnn")
    for build, code, fragments in BAD_V2.values():
        await assert_status(vision.ModelInfer(build(inputs["images"])), grpc.StatusCode[code], *fragments)
    for model in SEQUENCE_MODELS:
        v2 = v2_stub(channels, model)
        for build, code, fragments in BAD.values():
            ids, mask = build()
            await assert_status(v2.ModelInfer(sequence_request(model, ids, mask)), grpc.StatusCode[code], *fragments)
    for model in MODELS:
        assert output(await v2_stub(channels, model).ModelInfer(pinned(model, inputs, ""))).shape[0] > 0


async def test_batched_requests_get_what_they_get_alone_from_an_onnx_version(channels, inputs):
    for model in MODELS:
        v2 = v2_stub(channels, model)
        if model == "fashion_cnn":
            requests = [image_request(inputs["images"][i : i + 1]) for i in range(8)]
        else:
            ids, mask = inputs["ids"], inputs["mask"]
            requests = [sequence_request(model, ids[i : i + 1], mask[i : i + 1]) for i in range(len(ids))]
        alone = [output(await v2.ModelInfer(request)) for request in requests]
        together = await asyncio.gather(*(v2.ModelInfer(request) for request in requests))
        for single, batched in zip(alone, together, strict=True):
            np.testing.assert_allclose(output(batched), single, atol=2e-5)


async def test_typed_apis_answer_from_the_onnx_default(channels, onnx_repository, inputs):
    versions = {model: exported for model, (_, exported) in onnx_repository["versions"].items()}
    raw = vision_pb2.Image(raw=vision_pb2.RawImage(pixels=inputs["images"][0, 0].ravel(), height=28, width=28))
    image = await vision_pb2_grpc.VisionServiceStub(channels["vision"]).ClassifyImage(
        vision_pb2.ClassifyImageRequest(images=[raw], top_k=2)
    )
    assert image.model_version == versions["fashion_cnn"] and len(image.results[0].labels) == 2
    items = [
        common_pb2.TokenizedText(input_ids=row[m == 1]) for row, m in zip(inputs["ids"], inputs["mask"], strict=True)
    ]
    text = await text_pb2_grpc.TextServiceStub(channels["text"]).ClassifyText(text_pb2.ClassifyTextRequest(items=items))
    assert text.model_version == versions["review_lstm"] and len(text.results) == len(items)
    transformer = transformer_pb2_grpc.TransformerServiceStub(channels["transformer"])
    embedded = await transformer.Embed(transformer_pb2.EmbedRequest(items=items[:2]))
    assert embedded.model_version == versions["minilm_embed"]
    assert np.linalg.norm(embedded.embeddings[0].values) == pytest.approx(1.0, abs=1e-5)
    classified = await transformer.ClassifyText(transformer_pb2.ClassifyTextRequest(items=items[:2]))
    assert classified.model_version == versions["minilm_sentiment"]
    assert sum(label.probability for label in classified.results[0].labels) == pytest.approx(1.0, abs=1e-5)


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
