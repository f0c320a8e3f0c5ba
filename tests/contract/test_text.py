"""The text service over gRPC: typed API, v2, padding and batching invariance, int8 beside fp32, bad input; with
the torch version, then the ONNX version as the served default."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest

from maas.common.v1 import common_pb2
from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from maas.text.v1 import text_pb2 as pb
from maas.text.v1 import text_pb2_grpc
from maas.tokenizer.v1 import tokenizer_pb2_grpc
from services.common.repository import read_version, write_version
from services.common.server import GrpcServer, build_server
from services.text.spec import SPEC, TextSettings
from tests.conftest import PLATFORMS, Served, started
from tests.contract.test_transformer import BAD, TEXTS, _ids, output, sequence_request, token_arrays
from tests.contract.test_v2_echo import assert_status

MODEL = "review_lstm"


@pytest.fixture(params=PLATFORMS)
def platform(request: pytest.FixtureRequest) -> str:
    """Each test here runs with the torch, then the ONNX version as the served default."""
    return request.param


@pytest.fixture
async def stubs(tokenizer_server: GrpcServer, text_server: GrpcServer):
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{tokenizer_server.port}") as tokenizer,
        grpc.aio.insecure_channel(f"127.0.0.1:{text_server.port}") as text,
    ):
        yield (
            tokenizer_pb2_grpc.TokenizerServiceStub(tokenizer),
            text_pb2_grpc.TextServiceStub(text),
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(text),
        )


def pinned(ids: np.ndarray, mask: np.ndarray, version: str) -> v2pb.ModelInferRequest:
    request = sequence_request(MODEL, ids, mask)
    request.model_version = version
    return request


async def test_typed_classify_matches_v2(stubs, served: Served):
    tokenizer, typed, v2 = stubs
    default = served.default(MODEL)
    ids, mask = await token_arrays(tokenizer, TEXTS)
    items = [common_pb2.TokenizedText(input_ids=row[m == 1]) for row, m in zip(ids, mask, strict=True)]
    classified = await typed.ClassifyText(pb.ClassifyTextRequest(items=items))
    assert classified.model_version == default, "int8 is served only when asked for"
    probs = output(await v2.ModelInfer(sequence_request(MODEL, ids, mask)))
    assert probs.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    for result, row in zip(classified.results, probs, strict=True):
        assert sorted(label.name for label in result.labels) == ["great", "other"]
        assert {label.index: label.probability for label in result.labels} == pytest.approx(dict(enumerate(row)))
    top = await typed.ClassifyText(pb.ClassifyTextRequest(items=items[:2], top_k=1, model_version=default))
    assert top.model_version == default and [len(r.labels) for r in top.results] == [1, 1]


@pytest.mark.parametrize(
    ("platform", "version", "tolerance"),
    [("torch", "", 1e-5), ("onnx", "", 1e-5), ("torch", "2", 5e-3)],
    ids=["torch", "onnx", "torch-int8"],
)
async def test_padding_holes_and_batching_do_not_change_probabilities(stubs, version, tolerance):
    """The default version (fp32 torch or ONNX) is exact; int8 (a torch version) quantizes activations with
    one scale per batch, so a row moves slightly with its batch's other rows and padding."""
    tokenizer, _, v2 = stubs
    ids, mask = await token_arrays(tokenizer, TEXTS)
    alone = [
        output(await v2.ModelInfer(pinned(ids[i : i + 1, : mask[i].sum()], mask[i : i + 1, : mask[i].sum()], version)))
        for i in range(len(TEXTS))
    ]
    together = await asyncio.gather(
        *(v2.ModelInfer(pinned(ids[i : i + 1], mask[i : i + 1], version)) for i in range(6))
    )
    for single, batched in zip(alone, together, strict=True):
        np.testing.assert_allclose(output(batched), single, atol=tolerance)
    np.testing.assert_allclose(
        output(await v2.ModelInfer(pinned(ids, mask, version))), np.concatenate(alone), atol=tolerance
    )
    holed_ids = np.insert(ids[:1], [2, 2, 2], 7, axis=1)
    holed_mask = np.insert(mask[:1], [2, 2, 2], 0, axis=1)
    np.testing.assert_allclose(
        output(await v2.ModelInfer(pinned(holed_ids, holed_mask, version))), alone[0], atol=tolerance
    )


@pytest.mark.parametrize("platform", ["torch"])
async def test_int8_is_served_beside_fp32_and_says_so(stubs, model_repository: Path):
    tokenizer, _, v2 = stubs
    index = await v2.RepositoryIndex(v2pb.RepositoryIndexRequest(ready=True))
    assert sorted(m.version for m in index.models if m.name == MODEL) == ["1", "2"]
    assert read_version(model_repository / MODEL / "1", MODEL).quantization is None
    int8 = read_version(model_repository / MODEL / "2", MODEL)
    assert int8.quantization == "dynamic_int8" and int8.data["quantized_from"] == f"{MODEL}/1"
    assert abs(int8.metrics["test_accuracy"] - int8.metrics["fp32_test_accuracy"]) <= 0.01
    ids, mask = await token_arrays(tokenizer, TEXTS)
    fp32 = output(await v2.ModelInfer(pinned(ids, mask, "1")))
    quantized = output(await v2.ModelInfer(pinned(ids, mask, "2")))
    assert not np.array_equal(fp32, quantized)
    np.testing.assert_allclose(quantized, fp32, atol=0.05)


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_input_gets_documented_status_and_server_keeps_serving(stubs, case):
    _, _, v2 = stubs
    build, code, fragments = BAD[case]
    ids, mask = build()
    await assert_status(v2.ModelInfer(sequence_request(MODEL, ids, mask)), grpc.StatusCode[code], *fragments)
    assert output(await v2.ModelInfer(sequence_request(MODEL, _ids(1, 4), np.ones((1, 4), np.int64)))).shape[0] == 1


async def test_wrong_dtype_and_typed_mistakes(stubs):
    _, typed, v2 = stubs
    request = sequence_request(MODEL, _ids(1, 4), np.ones((1, 4), np.int64), datatype="INT32")
    await assert_status(v2.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "must be INT64, got INT32")
    await assert_status(typed.ClassifyText(pb.ClassifyTextRequest()), grpc.StatusCode.INVALID_ARGUMENT, "no items")
    bad_mask = common_pb2.TokenizedText(input_ids=[101, 2023, 102], attention_mask=[1, 1])
    await assert_status(
        typed.ClassifyText(pb.ClassifyTextRequest(items=[bad_mask])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "2 mask entries for 3 ids",
    )
    outside = common_pb2.TokenizedText(input_ids=[101, 40000, 102])
    await assert_status(
        typed.ClassifyText(pb.ClassifyTextRequest(items=[outside])), grpc.StatusCode.INVALID_ARGUMENT, "[0, 30522)"
    )
    many = pb.ClassifyTextRequest(items=[common_pb2.TokenizedText(input_ids=[101, 102])] * 33)
    await assert_status(typed.ClassifyText(many), grpc.StatusCode.RESOURCE_EXHAUSTED, "33 items", "limit is 32")
    unknown = pb.ClassifyTextRequest(items=[common_pb2.TokenizedText(input_ids=[101, 102])], model_version="4")
    await assert_status(typed.ClassifyText(unknown), grpc.StatusCode.NOT_FOUND, "no version '4'")


async def test_an_unknown_quantization_is_refused_with_its_name(model_repository: Path, tmp_path: Path):
    shutil.copytree(model_repository / MODEL / "1", tmp_path / MODEL / "1")
    shutil.copytree(model_repository / MODEL / "1", tmp_path / MODEL / "2")
    config = read_version(tmp_path / MODEL / "1", MODEL)
    write_version(tmp_path / MODEL / "2", config.model_copy(update={"version": 2, "quantization": "int4_magic"}))
    (tmp_path / MODEL / "model.json").write_text('{"version_policy": "specific:1"}')
    settings = TextSettings(port=0, metrics_port=0, model_repository=tmp_path)
    async with (
        started(build_server(SPEC, settings)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
    ):
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(ch)
        load = v2pb.RepositoryModelLoadRequest(model_name=MODEL)
        load.parameters["version"].string_param = "2"
        await assert_status(
            v2.RepositoryModelLoad(load), grpc.StatusCode.INVALID_ARGUMENT, "unknown quantization 'int4_magic'"
        )
        assert output(await v2.ModelInfer(sequence_request(MODEL, _ids(1, 4), np.ones((1, 4), np.int64)))).shape == (
            1,
            2,
        )


@pytest.mark.parametrize("platform", ["torch"])
async def test_the_int8_version_answers_only_requests_that_ask_for_it(stubs, model_repository: Path):
    """`make up` publishes int8 beside fp32; serving it by default is the operator's choice (model.json)."""
    assert json.loads((model_repository / MODEL / "model.json").read_text())["default_version"] == "1"
    tokenizer, _, v2 = stubs
    ids, mask = await token_arrays(tokenizer, TEXTS)
    assert (await v2.ModelInfer(sequence_request(MODEL, ids, mask))).model_version == "1"
    assert (await v2.ModelInfer(pinned(ids, mask, "2"))).model_version == "2"


@pytest.mark.parametrize(
    ("model_file", "default"),
    [('{"version_policy": "latest:2"}', "1"), ('{"version_policy": "latest:2", "default_version": "2"}', "2")],
    ids=["none named: the newest that is not quantized", "the operator names int8"],
)
async def test_the_default_version_is_the_one_model_json_names(
    model_repository: Path, tmp_path: Path, model_file: str, default: str
):
    shutil.copytree(model_repository / MODEL, tmp_path / MODEL)
    (tmp_path / MODEL / "model.json").write_text(model_file)
    settings = TextSettings(port=0, metrics_port=0, model_repository=tmp_path)
    async with (
        started(build_server(SPEC, settings)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        typed = text_pb2_grpc.TextServiceStub(channel)
        request = pb.ClassifyTextRequest(items=[common_pb2.TokenizedText(input_ids=[101, 2307, 102])])
        assert (await typed.ClassifyText(request)).model_version == default
