"""The v2 tensor codec, without sockets."""

from __future__ import annotations

import pickle
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

from maas.inference import grpc_service_pb2 as pb
from services.common.codec import (
    DATATYPES,
    MAX_BYTES_ELEMENTS,
    MAX_CONTENTS_VALUES,
    Tensor,
    as_message,
    datatype_of,
    decode_bytes,
    decode_inputs,
    encode_bytes,
    infer_reply,
    raw_bytes,
)
from services.common.errors import InvalidInput, Overloaded


def test_datatype_of_covers_every_fixed_dtype():
    samples = {
        "BOOL": np.bool_,
        "UINT8": np.uint8,
        "UINT16": np.uint16,
        "UINT32": np.uint32,
        "UINT64": np.uint64,
        "INT8": np.int8,
        "INT16": np.int16,
        "INT32": np.int32,
        "INT64": np.int64,
        "FP16": np.float16,
        "FP32": np.float32,
        "FP64": np.float64,
        "BF16": ml_dtypes.bfloat16,
    }
    for name, dtype in samples.items():
        assert datatype_of(np.zeros(2, dtype=dtype)) == name
    assert datatype_of(np.zeros(2, dtype=">f4")) == "FP32"
    assert datatype_of(np.array([b"a"], dtype=object)) == "BYTES"
    assert set(samples) | {"BYTES"} == set(DATATYPES)
    with pytest.raises(ValueError, match="complex"):
        datatype_of(np.zeros(1, dtype=np.complex64))


def test_bytes_length_prefixes_are_little_endian():
    encoded = encode_bytes(np.array([b"ab", "\u00e9"], dtype=object))
    assert encoded == b"\x02\x00\x00\x00ab\x02\x00\x00\x00\xc3\xa9"
    assert list(decode_bytes("X", encoded, 2)) == [b"ab", "\u00e9".encode()]


def _reply(*tensors: Tensor) -> pb.ModelInferResponse:
    return pb.ModelInferResponse.FromString(infer_reply(pb.ModelInferResponse(), tensors).SerializeToString())


def test_outputs_are_raw_and_big_endian_arrays_are_written_little_endian():
    response = _reply(Tensor.of("A", np.array([1.0, 2.0], dtype=">f4")))
    assert not response.outputs[0].HasField("contents")
    assert response.raw_output_contents[0] == np.array([1.0, 2.0], dtype="<f4").tobytes()


def test_float_output_declared_bf16_rounds_to_nearest_even():
    values = np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8], dtype=np.float32)
    response = _reply(Tensor("B", "BF16", values))
    decoded = np.frombuffer(response.raw_output_contents[0], dtype=ml_dtypes.bfloat16).astype(np.float32)
    assert decoded.tolist() == [1.0, 1.0 + 4 * 2**-8]


def test_infer_reply_serializes_as_the_message_holding_its_outputs():
    tensors = [
        Tensor("IDS", "INT64", np.arange(1024 * 256, dtype=np.int64).reshape(1024, 256)[:, ::2]),
        Tensor("TEXT", "BYTES", np.array([b"ab", b"", "\u00e9"], dtype=object)),
        Tensor("EMPTY", "FP32", np.zeros((0, 384), dtype=np.float32)),
        Tensor("FLAG", "BOOL", np.array([[True, False]])),
    ]
    head = pb.ModelInferResponse(model_name="m", model_version="3", id="req-1")
    reply = infer_reply(head, tensors)
    message = pb.ModelInferResponse(model_name="m", model_version="3", id="req-1")
    for tensor in tensors:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.array.shape)
        message.raw_output_contents.append(raw_bytes(tensor))
    assert reply.SerializeToString() == message.SerializeToString()
    assert reply.message() == message
    assert as_message(reply) == message and as_message(message) is message
    assert reply.model_version == "3"
    assert pickle.loads(pickle.dumps(reply)).SerializeToString() == message.SerializeToString()


def test_raw_inputs_decode_without_copy():
    data = np.arange(6, dtype="<i4").tobytes()
    request = pb.ModelInferRequest(raw_input_contents=[data])
    request.inputs.add(name="X", datatype="INT32", shape=[2, 3])
    (tensor,) = decode_inputs(request).values()
    assert tensor.array.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert not tensor.array.flags.writeable


def test_empty_tensor_needs_no_data():
    request = pb.ModelInferRequest()
    request.inputs.add(name="E", datatype="FP32", shape=[0, 4])
    assert decode_inputs(request)["E"].array.shape == (0, 4)


def test_uint_contents_reject_negative_values():
    request = pb.ModelInferRequest()
    request.inputs.add(name="U", datatype="UINT16", shape=[1]).contents.uint_contents.append(70000)
    with pytest.raises(InvalidInput, match=r"\[0, 65535\]"):
        decode_inputs(request)


def _bytes_request(shape: list[int], raw: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest()
    request.inputs.add(name="X", datatype="BYTES", shape=shape)
    request.raw_input_contents.append(raw)
    return request


def test_declared_bytes_elements_are_checked_against_the_data_before_anything_is_allocated():
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput, match="134217728 BYTES elements need at least 536870912 bytes"):
            decode_inputs(_bytes_request([134217728], b""))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_request_holds_at_most_max_bytes_elements_strings():
    many = _bytes_request([MAX_BYTES_ELEMENTS], b"\0\0\0\0" * MAX_BYTES_ELEMENTS)
    many.inputs.add(name="Y", datatype="BYTES", shape=[1])
    many.raw_input_contents.append(b"\0\0\0\0")
    with pytest.raises(Overloaded, match=f"hold over {MAX_BYTES_ELEMENTS} elements, the limit per request"):
        decode_inputs(many)
    assert decode_inputs(_bytes_request([2], b"\1\0\0\0a\0\0\0\0"))["X"].array.tolist() == [b"a", b""]


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([1] * 65, "shape has 65 dimensions; at most 64"),
        ([0, 2**62, 2**62], "nonzero dimensions multiply to over 2147483648"),
        ([2**16, 2**16], "has 4294967296 elements; at most 2147483648"),
        ([2, -1], "negative dimension"),
    ],
)
def test_shapes_numpy_cannot_build_are_refused_with_the_limit(shape, message):
    request = pb.ModelInferRequest()
    request.inputs.add(name="X", datatype="FP32", shape=shape)
    request.raw_input_contents.append(b"")
    with pytest.raises(InvalidInput, match=message):
        decode_inputs(request)


def test_large_tensors_must_come_as_raw_contents():
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="X", datatype="INT64", shape=[MAX_CONTENTS_VALUES + 1])
    tensor.contents.int64_contents.extend([1] * (MAX_CONTENTS_VALUES + 1))
    with pytest.raises(Overloaded, match="send large tensors in raw_input_contents"):
        decode_inputs(request)
