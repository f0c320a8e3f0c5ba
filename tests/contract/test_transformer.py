"""The transformer service over gRPC: parity with sentence-transformers, typed API, v2, bad input; with the torch
versions, then the ONNX versions as the served defaults."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest

from maas.common.v1 import common_pb2
from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from maas.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from maas.transformer.v1 import transformer_pb2 as pb
from maas.transformer.v1 import transformer_pb2_grpc
from services.common.repository import read_version
from services.common.server import GrpcServer
from services.tokenizer.export import source_directory
from tests.conftest import PLATFORMS, Served, started
from tests.contract.test_v2_echo import assert_status

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome!",
    "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e \u2014 \u6f22\u5b57 \U0001f600",
    "This product arrived broken and the seller never answered my emails. " * 12,
    "ok",
]


@pytest.fixture(params=PLATFORMS)
def platform(request: pytest.FixtureRequest) -> str:
    """Each test here runs with the torch, then the ONNX versions as the served defaults."""
    return request.param


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """sentence-transformers' own encode of TEXTS, from the package's files."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(source_directory()), device="cpu").encode(TEXTS, normalize_embeddings=True)


@pytest.fixture
async def stubs(tokenizer_server: GrpcServer, transformer_server: GrpcServer):
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{tokenizer_server.port}") as tokenizer,
        grpc.aio.insecure_channel(f"127.0.0.1:{transformer_server.port}") as transformer,
    ):
        yield (
            tokenizer_pb2_grpc.TokenizerServiceStub(tokenizer),
            transformer_pb2_grpc.TransformerServiceStub(transformer),
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(transformer),
        )


async def token_arrays(tokenizer, texts) -> tuple[np.ndarray, np.ndarray]:
    response = await tokenizer.Tokenize(tokenizer_pb2.TokenizeRequest(texts=texts))
    ids = np.array([e.input_ids for e in response.encodings], dtype=np.int64)
    return ids, np.array([e.attention_mask for e in response.encodings], dtype=np.int64)


def sequence_request(model: str, ids: np.ndarray, mask: np.ndarray, datatype: str = "INT64") -> v2pb.ModelInferRequest:
    request = v2pb.ModelInferRequest(model_name=model)
    for name, array in (("INPUT_IDS", ids), ("ATTENTION_MASK", mask)):
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(array.astype("<i8" if datatype == "INT64" else "<i4").tobytes())
    return request


def output(response) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(response.outputs[0].shape))


async def test_served_embeddings_match_sentence_transformers(stubs, reference):
    tokenizer, _, v2 = stubs
    ids, mask = await token_arrays(tokenizer, TEXTS)
    served = output(await v2.ModelInfer(sequence_request("minilm_embed", ids, mask)))
    assert served.shape == (len(TEXTS), 384)
    cosines = (served * reference).sum(axis=1) / np.linalg.norm(served, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= 0.9999, cosines
    assert float(served[0] @ served[1]) == pytest.approx(0.755, abs=0.005)


async def test_typed_embed_and_classify(stubs, served: Served):
    tokenizer, typed, _ = stubs
    encodings = (await tokenizer.Tokenize(tokenizer_pb2.TokenizeRequest(texts=TEXTS[:3]))).encodings
    items = [common_pb2.TokenizedText(input_ids=e.input_ids) for e in encodings]
    embedded = await typed.Embed(pb.EmbedRequest(items=items))
    assert embedded.model_version == served.default("minilm_embed") and len(embedded.embeddings) == 3
    assert np.linalg.norm(embedded.embeddings[0].values) == pytest.approx(1.0, abs=1e-5)
    classified = await typed.ClassifyText(pb.ClassifyTextRequest(items=items))
    assert classified.model_version == served.default("minilm_sentiment")
    for result in classified.results:
        assert sorted(label.name for label in result.labels) == ["great", "other"]
        assert sum(label.probability for label in result.labels) == pytest.approx(1.0, abs=1e-5)
    top = await typed.ClassifyText(pb.ClassifyTextRequest(items=items, top_k=1))
    assert [len(r.labels) for r in top.results] == [1, 1, 1]


async def test_padding_and_batching_do_not_change_embeddings(stubs):
    tokenizer, _, v2 = stubs
    ids, mask = await token_arrays(tokenizer, TEXTS)
    alone = [
        output(await v2.ModelInfer(sequence_request("minilm_embed", ids[i : i + 1], mask[i : i + 1])))
        for i in range(len(TEXTS))
    ]
    together = await asyncio.gather(
        *(v2.ModelInfer(sequence_request("minilm_embed", ids[i : i + 1], mask[i : i + 1])) for i in range(len(TEXTS)))
    )
    for single, batched in zip(alone, together, strict=True):
        np.testing.assert_allclose(output(batched), single, atol=2e-5)
    wide_ids = np.pad(ids[:1], [(0, 0), (0, 100)])
    wide_mask = np.pad(mask[:1], [(0, 0), (0, 100)])
    np.testing.assert_allclose(
        output(await v2.ModelInfer(sequence_request("minilm_embed", wide_ids, wide_mask))), alone[0], atol=2e-5
    )


async def test_sentiment_probabilities(stubs):
    tokenizer, _, v2 = stubs
    ids, mask = await token_arrays(tokenizer, TEXTS)
    probs = output(await v2.ModelInfer(sequence_request("minilm_sentiment", ids, mask)))
    assert probs.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def _ids(rows: int, length: int, value: int = 2023) -> np.ndarray:
    ids = np.full((rows, length), value, dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids


BAD = {
    "id at the vocabulary size": (
        lambda: (_ids(2, 5, 30522), np.ones((2, 5), np.int64)),
        "INVALID_ARGUMENT",
        ["[0, 30522)", "30522"],
    ),
    "negative id": (lambda: (_ids(1, 5, -3), np.ones((1, 5), np.int64)), "INVALID_ARGUMENT", ["[0, 30522)", "-3"]),
    "ids and mask differ in shape": (
        lambda: (_ids(2, 5), np.ones((2, 4), np.int64)),
        "INVALID_ARGUMENT",
        ["INPUT_IDS is [2, 5] but ATTENTION_MASK is [2, 4]"],
    ),
    "empty batch": (lambda: (_ids(0, 5), np.ones((0, 5), np.int64)), "INVALID_ARGUMENT", ["empty batch"]),
    "longer than 512": (
        lambda: (_ids(1, 513), np.ones((1, 513), np.int64)),
        "INVALID_ARGUMENT",
        ["513 tokens", "at most 512"],
    ),
    "mask not 0/1": (lambda: (_ids(1, 5), np.full((1, 5), 2, np.int64)), "INVALID_ARGUMENT", ["only 0 and 1"]),
    "a row without tokens": (
        lambda: (_ids(2, 5), np.array([[1] * 5, [0] * 5])),
        "INVALID_ARGUMENT",
        ["row 1 has no tokens"],
    ),
    "too many sequences": (
        lambda: (_ids(33, 5), np.ones((33, 5), np.int64)),
        "RESOURCE_EXHAUSTED",
        ["33 sequences", "limit is 32"],
    ),
}


@pytest.mark.parametrize("model", ["minilm_embed", "minilm_sentiment"])
@pytest.mark.parametrize("case", list(BAD))
async def test_bad_input_gets_documented_status_and_server_keeps_serving(stubs, model, case):
    _, _, v2 = stubs
    build, code, fragments = BAD[case]
    ids, mask = build()
    await assert_status(v2.ModelInfer(sequence_request(model, ids, mask)), grpc.StatusCode[code], *fragments)
    assert output(await v2.ModelInfer(sequence_request(model, _ids(1, 4), np.ones((1, 4), np.int64)))).shape[0] == 1


async def test_wrong_dtype_and_typed_mistakes(stubs):
    _, typed, v2 = stubs
    request = sequence_request("minilm_embed", _ids(1, 4), np.ones((1, 4), np.int64), datatype="INT32")
    await assert_status(v2.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "must be INT64, got INT32")
    await assert_status(typed.Embed(pb.EmbedRequest()), grpc.StatusCode.INVALID_ARGUMENT, "no items")
    bad_mask = common_pb2.TokenizedText(input_ids=[101, 2023, 102], attention_mask=[1, 1])
    await assert_status(
        typed.Embed(pb.EmbedRequest(items=[bad_mask])), grpc.StatusCode.INVALID_ARGUMENT, "2 mask entries for 3 ids"
    )
    pinned = pb.ClassifyTextRequest(items=[common_pb2.TokenizedText(input_ids=[101, 102])], model_version="4")
    await assert_status(typed.ClassifyText(pinned), grpc.StatusCode.NOT_FOUND, "no version '4'")


async def test_int8_versions_of_minilm_are_served_beside_fp32(model_repository: Path, tmp_path: Path):
    from services.common.server import build_server
    from services.common.torch_weights import DYNAMIC_INT8
    from services.transformer.spec import SPEC, TransformerSettings
    from services.transformer.train import quantize_embed, quantize_sentiment

    for model in ("tokenizer", "minilm_embed", "minilm_sentiment"):
        shutil.copytree(model_repository / model, tmp_path / model, copy_function=os.link)
    embed = quantize_embed(tmp_path, DYNAMIC_INT8, test_limit=20, progress=False)
    sentiment = quantize_sentiment(tmp_path, DYNAMIC_INT8, test_limit=40, progress=False)
    assert (embed.name, sentiment.name) == ("2", "2")
    embed_config = read_version(embed, "minilm_embed")
    assert embed_config.quantization == "dynamic_int8"
    assert embed_config.metrics["cosine_to_fp32_mean"] >= 0.96 and embed_config.metrics["cosine_to_fp32_min"] >= 0.9
    sentiment_config = read_version(sentiment, "minilm_sentiment")
    assert sentiment_config.quantization == "dynamic_int8"
    assert sentiment_config.architecture["encoder"] == "minilm_embed/1"
    settings = TransformerSettings(port=0, metrics_port=0, model_repository=tmp_path)
    ids, mask = _ids(3, 12), np.ones((3, 12), np.int64)
    async with (
        started(build_server(SPEC, settings)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
    ):
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(ch)
        index = await v2.RepositoryIndex(v2pb.RepositoryIndexRequest(ready=True))
        assert sorted((m.name, m.version) for m in index.models if m.name != "echo") == [
            ("minilm_embed", "1"),
            ("minilm_embed", "2"),
            ("minilm_sentiment", "1"),
            ("minilm_sentiment", "2"),
        ]
        served = {}
        for model in ("minilm_embed", "minilm_sentiment"):
            for version in ("1", "2"):
                request = sequence_request(model, ids, mask)
                request.model_version = version
                served[model, version] = output(await v2.ModelInfer(request))
    exact, quantized = served["minilm_embed", "1"], served["minilm_embed", "2"]
    assert not np.array_equal(exact, quantized)
    assert (exact * quantized).sum(axis=1).min() >= 0.9
    np.testing.assert_allclose(served["minilm_sentiment", "2"], served["minilm_sentiment", "1"], atol=0.1)


def live_encoders() -> int:
    """Encoders alive in this process, after a full collection."""
    from services.transformer.model import Encoder

    gc.collect()
    return sum(isinstance(found, Encoder) for found in gc.get_objects())


def repository_request(kind, model: str):
    request = kind(model_name=model)
    request.parameters["version"].string_param = "1"
    return request


@pytest.mark.parametrize("platform", ["torch"])
@pytest.mark.parametrize("hosting", ["grpc"])
async def test_unloading_minilm_releases_its_encoder(transformer_server: GrpcServer, hosting: str):
    """Both torch models share one encoder per version (a torch module: ONNX versions hold their own
    sessions); it is released with the last version that uses it."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{transformer_server.port}") as channel:
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        loaded = live_encoders()
        await v2.RepositoryModelUnload(repository_request(v2pb.RepositoryModelUnloadRequest, "minilm_embed"))
        assert live_encoders() == loaded, "minilm_sentiment still uses the encoder"
        await v2.RepositoryModelUnload(repository_request(v2pb.RepositoryModelUnloadRequest, "minilm_sentiment"))
        assert live_encoders() == loaded - 1, "unloading every version that used the encoder released it"
        for model in ("minilm_sentiment", "minilm_embed"):
            await v2.RepositoryModelLoad(repository_request(v2pb.RepositoryModelLoadRequest, model))
        assert live_encoders() == loaded
        embedding = output(await v2.ModelInfer(sequence_request("minilm_embed", _ids(1, 5), np.ones((1, 5), np.int64))))
        assert embedding.shape == (1, 384)
