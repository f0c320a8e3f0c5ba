"""Contract tests of the runtime: a real grpc.aio server on a free port, production interceptor, `echo`."""

from __future__ import annotations

import struct
import urllib.request

import grpc
import ml_dtypes
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from maas.inference import grpc_service_pb2 as pb
from services.common.server import GrpcServer

LE = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
    "BF16": ml_dtypes.bfloat16,
}
VALUES = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([0, 1, 255], dtype=np.uint8),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "UINT32": np.array([0, 2**32 - 1, 7], dtype=np.uint32),
    "UINT64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "INT8": np.array([-128, 0, 127], dtype=np.int8),
    "INT16": np.array([[-32768, 32767]], dtype=np.int16),
    "INT32": np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    "INT64": np.array([-(2**63), 2**63 - 1, 5], dtype=np.int64),
    "FP16": np.array([0.5, -2.0, 65504.0, np.inf], dtype=np.float16),
    "FP32": np.array([[1.5, -3.25e-30], [np.inf, 3.4e38]], dtype=np.float32),
    "FP64": np.array([np.pi, -1e-300, 1e300], dtype=np.float64),
    "BF16": np.array([1.0, -0.5, 3.0e38, -1.5e-38, 0.0, np.inf], dtype=ml_dtypes.bfloat16),
    "BYTES": np.array([b"", b"hello", "\u00e9t\u00e9 \u6f22\u5b57 \U0001f600".encode(), b"\xff\xfe\x00"], dtype=object),
}
CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def raw_bytes(datatype: str, array: np.ndarray) -> bytes:
    """Serialize a tensor as the v2 spec says, independently of the codec under test."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(item)) + item for item in array.reshape(-1))
    return array.astype(LE[datatype]).tobytes()


def from_raw(datatype: str, data: bytes, shape) -> np.ndarray:
    """Parse raw output bytes as the v2 spec says."""
    if datatype == "BYTES":
        items, offset = [], 0
        while offset < len(data):
            (length,) = struct.unpack_from("<I", data, offset)
            items.append(data[offset + 4 : offset + 4 + length])
            offset += 4 + length
        return np.array(items, dtype=object).reshape(shape)
    return np.frombuffer(data, LE[datatype]).reshape(shape)


def infer_request(*tensors: tuple[str, str, np.ndarray], raw: bool, **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo", **fields)
    for name, datatype, array in tensors:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            request.raw_input_contents.append(raw_bytes(datatype, array))
        else:
            getattr(tensor.contents, CONTENTS[datatype]).extend(array.reshape(-1).tolist())
    return request


def assert_same(datatype: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if datatype == "BYTES":
        assert list(got.reshape(-1)) == list(want.reshape(-1))
    else:
        np.testing.assert_array_equal(got, want.astype(got.dtype))


async def assert_status(call, code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    details = info.value.details()
    for fragment in fragments:
        assert fragment in details, details
    assert "Traceback" not in details
    return details


async def assert_still_serving(v2) -> None:
    response = await v2.ModelInfer(infer_request(("X", "INT32", np.arange(3, dtype=np.int32)), raw=True))
    assert from_raw("INT32", response.raw_output_contents[0], [3]).tolist() == [0, 1, 2]


@pytest.mark.parametrize("datatype", list(VALUES))
async def test_echo_round_trips_raw(v2, datatype):
    want = VALUES[datatype]
    response = await v2.ModelInfer(infer_request(("IN", datatype, want), raw=True, id="req-1"))
    assert response.model_name == "echo" and response.model_version == "1" and response.id == "req-1"
    (out,) = response.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("IN", datatype, list(want.shape))
    assert not out.HasField("contents")
    assert_same(datatype, from_raw(datatype, response.raw_output_contents[0], want.shape), want)


@pytest.mark.parametrize("datatype", list(CONTENTS))
async def test_echo_round_trips_contents(v2, datatype):
    want = VALUES[datatype]
    response = await v2.ModelInfer(infer_request(("IN", datatype, want), raw=False))
    (out,) = response.outputs
    assert out.datatype == datatype
    assert_same(datatype, from_raw(datatype, response.raw_output_contents[0], want.shape), want)


async def test_echo_returns_every_input_in_order(v2):
    tensors = [("A", "FP32", VALUES["FP32"]), ("B", "BYTES", VALUES["BYTES"]), ("C", "BF16", VALUES["BF16"])]
    response = await v2.ModelInfer(infer_request(*tensors, raw=True))
    assert [o.name for o in response.outputs] == ["A", "B", "C"]
    for (_, datatype, want), out, data in zip(tensors, response.outputs, response.raw_output_contents, strict=True):
        assert out.datatype == datatype
        assert_same(datatype, from_raw(datatype, data, want.shape), want)


async def test_requested_outputs_select_and_order(v2):
    request = infer_request(("A", "INT8", VALUES["INT8"]), ("B", "INT64", VALUES["INT64"]), raw=True)
    request.outputs.add(name="B")
    response = await v2.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["B"]
    request.outputs.add(name="NOPE")
    await assert_status(v2.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "no output NOPE")


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
async def test_half_precision_in_contents_is_invalid(v2, datatype):
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="H", datatype=datatype, shape=[1]).contents.fp32_contents.append(1.0)
    await assert_status(v2.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents")


MALFORMED = {
    "raw size does not match shape": (
        lambda: _raw("FP32", [2, 3], b"\0" * 20),
        ["needs 24 bytes", "got 20"],
    ),
    "contents count does not match shape": (
        lambda: _contents("INT32", [4], int_contents=[1, 2, 3]),
        ["needs 4 values", "got 3"],
    ),
    "unknown datatype": (lambda: _raw("FLOAT128", [1], b"\0" * 16), ["unknown datatype 'FLOAT128'"]),
    "negative dimension": (lambda: _raw("INT8", [-1], b""), ["negative dimension"]),
    "absurd size": (lambda: _raw("INT8", [1 << 20, 1 << 20], b""), ["elements"]),
    "contents in the wrong field": (lambda: _contents("INT64", [1], fp32_contents=[1.0]), ["sets fp32_contents"]),
    "INT8 out of range": (lambda: _contents("INT8", [1], int_contents=[300]), ["[-128, 127]"]),
    "BOOL raw not 0/1": (lambda: _raw("BOOL", [2], b"\x01\x07"), ["only bytes 0 and 1"]),
    "BYTES prefix past the end": (lambda: _raw("BYTES", [1], struct.pack("<I", 10) + b"abc"), ["declares 10 bytes"]),
    "BYTES too few elements": (lambda: _raw("BYTES", [2], struct.pack("<I", 1) + b"abcd"), ["ends after 1 of 2"]),
    "BYTES trailing bytes": (lambda: _raw("BYTES", [1], struct.pack("<I", 1) + b"ab"), ["left over"]),
    "input without data": (lambda: _no_data(), ["has no data"]),
    "duplicate input": (lambda: _duplicate(), ["more than once"]),
    "mixed raw and contents": (lambda: _mixed(), ["use one form"]),
    "raw count differs from inputs": (lambda: _raw_count(), ["2 entries for 1 inputs"]),
    "bad delay parameter": (lambda: _delay("slow"), ["delay_ms"]),
}


def _raw(datatype, shape, data):
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="X", datatype=datatype, shape=shape)
    request.raw_input_contents.append(data)
    return request


def _contents(datatype, shape, **contents):
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="X", datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents))
    return request


def _no_data():
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="X", datatype="FP32", shape=[2])
    return request


def _duplicate():
    request = _contents("INT32", [1], int_contents=[1])
    request.inputs.add(name="X", datatype="INT32", shape=[1], contents=pb.InferTensorContents(int_contents=[2]))
    return request


def _mixed():
    request = _raw("INT8", [1], b"\x01")
    request.inputs.add(name="Y", datatype="INT8", shape=[1], contents=pb.InferTensorContents(int_contents=[1]))
    request.raw_input_contents.append(b"\x01")
    return request


def _raw_count():
    request = _raw("INT8", [1], b"\x01")
    request.raw_input_contents.append(b"\x02")
    return request


def _delay(value):
    request = _raw("INT8", [1], b"\x01")
    request.parameters["delay_ms"].string_param = value
    return request


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_request_is_invalid_argument_and_server_keeps_serving(v2, case):
    build, fragments = MALFORMED[case]
    await assert_status(v2.ModelInfer(build()), grpc.StatusCode.INVALID_ARGUMENT, *fragments)
    await assert_still_serving(v2)


async def test_unknown_model_and_version_are_not_found(v2):
    request = _raw("INT8", [1], b"\x01")
    request.model_name = "resnet"
    await assert_status(v2.ModelInfer(request), grpc.StatusCode.NOT_FOUND, "unknown model 'resnet'", "echo")
    request.model_name, request.model_version = "echo", "7"
    await assert_status(v2.ModelInfer(request), grpc.StatusCode.NOT_FOUND, "no version '7'")
    await assert_status(v2.ModelMetadata(pb.ModelMetadataRequest(name="resnet")), grpc.StatusCode.NOT_FOUND)
    await assert_status(v2.ModelReady(pb.ModelReadyRequest(name="resnet")), grpc.StatusCode.NOT_FOUND)
    await assert_status(v2.ModelConfig(pb.ModelConfigRequest(name="resnet")), grpc.StatusCode.NOT_FOUND, "resnet")
    await assert_status(
        v2.ModelConfig(pb.ModelConfigRequest(name="echo", version="7")), grpc.StatusCode.NOT_FOUND, "no version '7'"
    )
    await assert_still_serving(v2)


async def test_oversized_message_is_resource_exhausted(v2, echo_server: GrpcServer):
    too_big = echo_server.settings.max_message_bytes + 1
    request = _raw("UINT8", [too_big], b"\0" * too_big)
    await assert_status(v2.ModelInfer(request), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max")
    await assert_still_serving(v2)


async def test_unexpected_model_error_is_internal_with_request_id_and_no_traceback(v2, echo_server, monkeypatch):
    async def broken(inputs, parameters):
        raise RuntimeError("secret detail from deep inside the model")

    monkeypatch.setattr(echo_server.models.get("echo").get(""), "infer", broken)
    request = _raw("INT8", [1], b"\x01")
    call = v2.ModelInfer(request, metadata=(("x-request-id", "trace-me-42"),))
    details = await assert_status(call, grpc.StatusCode.INTERNAL, "internal error", "trace-me-42")
    assert "secret" not in details


async def test_request_id_is_returned_in_trailing_metadata(v2):
    call = v2.ModelInfer(_raw("INT8", [1], b"\x01"), metadata=(("x-request-id", "abc-123"),))
    await call
    assert ("x-request-id", "abc-123") in tuple(await call.trailing_metadata())
    generated = v2.ModelInfer(_raw("INT8", [1], b"\x01"))
    await generated
    ids = [value for key, value in await generated.trailing_metadata() if key == "x-request-id"]
    assert len(ids) == 1 and len(ids[0]) == 32


async def test_server_and_model_metadata(v2):
    assert (await v2.ServerLive(pb.ServerLiveRequest())).live
    assert (await v2.ServerReady(pb.ServerReadyRequest())).ready
    assert (await v2.ModelReady(pb.ModelReadyRequest(name="echo"))).ready
    meta = await v2.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "maas" and meta.version and "model_repository" in meta.extensions
    model = await v2.ModelMetadata(pb.ModelMetadataRequest(name="echo"))
    assert (model.name, list(model.versions), model.platform) == ("echo", ["1"], "maas_echo")


async def test_stream_infer_reports_errors_per_request_and_keeps_streaming(v2):
    good = infer_request(("A", "INT16", VALUES["INT16"]), raw=True, id="1")
    bad = _raw("FP32", [2], b"\0")
    bad.id = "2"
    unknown = infer_request(("A", "INT16", VALUES["INT16"]), raw=True, id="3")
    unknown.model_name = "nope"
    responses = [r async for r in v2.ModelStreamInfer(iter([good, bad, unknown, good]))]
    assert [r.error_message == "" for r in responses] == [True, False, False, True]
    assert "needs 8 bytes" in responses[1].error_message and responses[1].infer_response.id == "2"
    assert "unknown model 'nope'" in responses[2].error_message
    assert from_raw("INT16", responses[3].infer_response.raw_output_contents[0], [1, 2]).tolist() == [[-32768, 32767]]


async def test_repository_unload_and_load(v2):
    index = await v2.RepositoryIndex(pb.RepositoryIndexRequest())
    assert [(m.name, m.version, m.state) for m in index.models] == [("echo", "1", "READY")]
    await v2.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="echo"))
    assert not (await v2.ModelReady(pb.ModelReadyRequest(name="echo"))).ready
    assert not (await v2.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))).models
    await assert_status(v2.ModelInfer(_raw("INT8", [1], b"\x01")), grpc.StatusCode.UNAVAILABLE, "no version loaded")
    load = pb.RepositoryModelLoadRequest(model_name="echo")
    load.parameters["version"].string_param = "2"
    await assert_status(v2.RepositoryModelLoad(load), grpc.StatusCode.NOT_FOUND, "no version '2'")
    load.parameters["version"].string_param = "1"
    await v2.RepositoryModelLoad(load)
    assert (await v2.ModelReady(pb.ModelReadyRequest(name="echo", version="1"))).ready
    await assert_still_serving(v2)


async def test_model_statistics_count_success_and_failure(v2):
    for _ in range(3):
        await assert_still_serving(v2)
    await assert_status(v2.ModelInfer(_raw("FP32", [2], b"\0")), grpc.StatusCode.INVALID_ARGUMENT)
    stats = await v2.ModelStatistics(pb.ModelStatisticsRequest(name="echo"))
    (entry,) = stats.model_stats
    assert (entry.name, entry.version) == ("echo", "1")
    assert entry.inference_stats.success.count == 3 and entry.inference_stats.fail.count == 1
    assert entry.inference_stats.success.ns > 0 and entry.execution_count == 3 and entry.last_inference > 0


async def test_health_reports_server_and_every_service(channel, echo_server: GrpcServer):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", *echo_server.service_names):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_reflection_lists_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name async for r in responses for s in r.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("maas_grpc_requests_total{"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


async def test_metrics_count_requests_by_model_and_code(v2, echo_server: GrpcServer):
    ok = 'maas_grpc_requests_total{code="OK",method="ModelInfer",model="echo",version="1"}'
    invalid = 'maas_grpc_requests_total{code="INVALID_ARGUMENT",method="ModelInfer",model="echo",version="1"}'
    before = _scrape(echo_server.metrics_port)
    await assert_still_serving(v2)
    await assert_still_serving(v2)
    await assert_status(v2.ModelInfer(_raw("FP32", [2], b"\0")), grpc.StatusCode.INVALID_ARGUMENT)
    after = _scrape(echo_server.metrics_port)
    assert after[ok] - before.get(ok, 0) == 2
    assert after[invalid] - before.get(invalid, 0) == 1


async def test_unparseable_request_bytes_are_invalid_argument(channel, v2):
    infer = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda body: body,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    await assert_status(infer(b"\x0a\xff\xff\xff"), grpc.StatusCode.INVALID_ARGUMENT, "not a valid protobuf message")
    stream = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=lambda body: body,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    responses = [r async for r in stream(iter([b"\x0a\xff\xff\xff"]))]
    assert len(responses) == 1
    assert "not a valid protobuf message" in responses[0].error_message
    await assert_still_serving(v2)
