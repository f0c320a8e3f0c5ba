"""Hypothesis strategies for malformed requests: v2 ModelInfer requests built from the models' declared
tensors and then broken (wrong datatypes, shapes and byte lengths, NaN and Inf, out-of-range ids,
invalid UTF-8, unknown names and versions, huge declared sizes over small payloads), any typed
message built from its descriptor with hostile field values, and raw bytes: random, or a valid
message cut short or with bytes flipped."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st
from PIL import Image

from maas.inference import grpc_service_pb2 as pb
from services.common.codec import CONTENTS_FIELD, DATATYPES, FIXED_DTYPES, encode_bytes
from services.common.v2 import set_parameter

VOCAB = 30522
HUGE = [2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1]
INT64_EDGES = [-(2**63), -1, 0, 1, 101, 102, VOCAB - 1, VOCAB, 2**31, 2**63 - 1]
UINT32_EDGES = [0, 1, 2, 3, 28, 512, 513, 4096, 2**31, 2**32 - 1]
FLOAT_EDGES = [float("nan"), float("inf"), float("-inf"), -1.0, 0.0, 0.5, 1.0, 255.0, 3.4e38]
PARAMETER_KEYS = ["max_length", "truncation", "model_version", "version", "delay_ms", "top_k", "", "\u00e9"]


@dataclass(frozen=True)
class Declared:
    """A model's declared input: name, datatype and shape (-1 for any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def _png(width: int, height: int, declared: tuple[int, int] | None = None, cut: int = 0) -> bytes:
    """A real PNG of `width` x `height`; its header may declare another size, its end may be cut off."""
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    if declared is not None:
        header = b"IHDR" + struct.pack(">II", *declared) + bytes(data[24:29])
        data[12:29] = header
        data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data[: len(data) - cut])


def _jpeg(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 10, 10)).save(buffer, format="JPEG")
    return buffer.getvalue()


IMAGES = [
    _png(28, 28),
    _png(64, 40),
    _jpeg(28),
    _png(1, 1, declared=(20000, 20000)),
    _png(1, 1, declared=(5000, 5000)),
    _png(1, 1, declared=(0, 7)),
    _png(28, 28, cut=10),
    _jpeg(32)[:-40],
    b"GIF89a\x01\x00\x01\x00",
    b"\x89PNG\r\n\x1a\n",
]


VALID_CHARACTERS = st.characters(blacklist_categories=("Cs",))
SHORT_TEXTS = st.one_of(
    st.text(VALID_CHARACTERS, max_size=40),
    st.sampled_from(["", " ", "Great taffy at a great price.", "caf\u00e9 \U0001f600", "\x00", "[CLS] [SEP]"]),
)
TEXTS = st.one_of(SHORT_TEXTS, st.integers(1, 120_000).map(lambda n: ("x " * n)[:n]))
"""Text a protobuf string field can carry (no lone surrogates): short, unusual, or up to 120,000 characters."""
HOSTILE_BYTES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\xff\xfe", b"\xc3(", b"\xed\xa0\x80", "ok \u00e9".encode(), b"", *IMAGES]),
)
"""Bytes for an image or BYTES field: random, invalid UTF-8, real or broken images."""
REPEATS = st.one_of(st.integers(0, 4), st.sampled_from([0, 1, 600, 1100]))
FEW = 8
BOOLEANS = st.booleans()
INT64 = st.one_of(st.sampled_from(INT64_EDGES), st.integers(0, VOCAB + 10), st.integers(-(2**63), 2**63 - 1))
SCALARS = {
    FieldDescriptor.TYPE_BYTES: HOSTILE_BYTES,
    FieldDescriptor.TYPE_BOOL: BOOLEANS,
    FieldDescriptor.TYPE_FLOAT: st.one_of(st.sampled_from(FLOAT_EDGES), st.floats(width=32, allow_nan=True)),
    FieldDescriptor.TYPE_DOUBLE: st.one_of(st.sampled_from(FLOAT_EDGES), st.floats(allow_nan=True)),
    FieldDescriptor.TYPE_UINT32: st.one_of(st.sampled_from(UINT32_EDGES), st.integers(0, 2**32 - 1)),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: INT64,
}
SHAPES = st.one_of(
    st.lists(st.integers(-3, 8), max_size=5),
    st.lists(st.sampled_from([0, 1, 2, *HUGE]), min_size=1, max_size=4),
    st.integers(60, 70).map(lambda n: [1] * n),
    st.just([134217728]),
)
"""Shapes numpy cannot build, negative sizes, and huge declared sizes."""
VERSIONS = st.one_of(st.sampled_from(["", "", "", "", "", "", "1", "2", "0", "-1", "9" * 20]), SHORT_TEXTS)
PARAMETER_VALUES = st.one_of(st.integers(-(2**63), 2**63 - 1), BOOLEANS, SHORT_TEXTS, st.floats())


def _field_value(field: FieldDescriptor, depth: int, long: bool) -> st.SearchStrategy:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message(field.message_type, depth + 1, long)
    if field.type == FieldDescriptor.TYPE_STRING:
        return TEXTS if long else SHORT_TEXTS
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.one_of(
            st.sampled_from([v.number for v in field.enum_type.values]), SCALARS[FieldDescriptor.TYPE_INT32]
        )
    return SCALARS[field.type]


@functools.cache
def message(descriptor: Descriptor, depth: int = 0, long: bool = True) -> st.SearchStrategy:
    """Messages of `descriptor`'s type with hostile values in a random subset of their fields; repeated
    fields hold up to 1,100 items (repeating a few drawn ones), with long texts only when they hold few."""
    cls = message_factory.GetMessageClass(descriptor)
    fields = [
        f
        for f in descriptor.fields
        if not (f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry)
    ]
    few = {f.name: st.lists(_field_value(f, depth, long), max_size=FEW) for f in fields if f.is_repeated}
    many = {f.name: st.lists(_field_value(f, depth, False), min_size=1, max_size=FEW) for f in fields if f.is_repeated}
    single = {f.name: _field_value(f, depth, long) for f in fields if not f.is_repeated}

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        result = cls()
        for field in fields:
            if not draw(BOOLEANS):
                continue
            if field.is_repeated:
                count = draw(REPEATS)
                items = draw(few[field.name] if count <= FEW else many[field.name])
                items = (items * (count // max(len(items), 1) + 1))[:count]
                container = getattr(result, field.name)
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    for item in items:
                        container.add().CopyFrom(item)
                else:
                    container.extend(items)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(result, field.name).CopyFrom(draw(single[field.name]))
            else:
                setattr(result, field.name, draw(single[field.name]))
        return result

    return build()


def _concrete_shape(draw: st.DrawFn, declared: tuple[int, ...]) -> list[int]:
    sizes = [draw(st.integers(0, 4) if i == 0 else SIZES) for i in range(len(declared))]
    return [size if d == -1 else d for size, d in zip(sizes, declared, strict=True)]


SIZES = st.integers(0, 12)
ELEMENTS = {
    "BYTES": st.lists(HOSTILE_BYTES, min_size=1, max_size=FEW),
    "b": st.lists(BOOLEANS, min_size=1, max_size=FEW),
    "f": st.lists(st.sampled_from(FLOAT_EDGES), min_size=1, max_size=FEW),
    "i": st.lists(st.one_of(st.sampled_from(INT64_EDGES), st.integers(0, VOCAB + 10)), min_size=1, max_size=FEW),
}


def _values(draw: st.DrawFn, datatype: str, count: int) -> np.ndarray:
    """`count` values of `datatype`: a few drawn ones, repeated."""
    dtype = FIXED_DTYPES.get(datatype)
    kind = "BYTES" if dtype is None else {"b": "b", "i": "i", "u": "i"}.get(dtype.kind, "f")
    drawn = draw(ELEMENTS[kind])
    values = (drawn * (count // len(drawn) + 1))[:count]
    if dtype is None:
        return np.array(values, dtype=object)
    if kind == "i":
        info = np.iinfo(dtype)
        return np.array([min(max(v, info.min), info.max) for v in values], dtype=dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.array(values, dtype=np.float64).astype(dtype)


@functools.cache
def infer_request(models: tuple[tuple[str, tuple[Declared, ...]], ...]) -> st.SearchStrategy[pb.ModelInferRequest]:
    """ModelInferRequests for one of `models` ((name, declared inputs) pairs) or an unknown one, from
    the declared inputs, broken in one or more ways."""
    declared_of = dict(models)
    names = st.one_of(st.sampled_from(sorted(declared_of)), st.sampled_from(sorted(declared_of)), TEXTS)

    @st.composite
    def build(draw: st.DrawFn) -> pb.ModelInferRequest:
        name = draw(names)
        request = pb.ModelInferRequest(model_name=name, model_version=draw(VERSIONS), id=draw(VERSIONS))
        declared = declared_of.get(name) or (Declared("X", draw(st.sampled_from(DATATYPES)), (-1,)),)
        raw_form = draw(BOOLEANS)
        for spec in draw(st.lists(st.sampled_from(declared), max_size=3)) or declared:
            tensor_name = draw(st.sampled_from([spec.name, spec.name, "", "X", "TEXT", "IMAGE", "INPUT_IDS"]))
            datatype = draw(st.sampled_from([spec.datatype] * 4 + [*DATATYPES, "FP128", "", "int64"]))
            shape = _concrete_shape(draw, spec.shape) if draw(st.integers(0, 3)) else draw(SHAPES)
            tensor = request.inputs.add(name=tensor_name, datatype=datatype, shape=shape)
            count = int(np.prod(shape)) if shape and all(0 <= d <= 64 for d in shape) else draw(SIZES)
            values = _values(draw, datatype if datatype in DATATYPES else "INT8", min(count, 4096))
            if raw_form:
                data = encode_bytes(values) if datatype == "BYTES" else values.tobytes()
                broken = draw(st.sampled_from(["", "", "", "", "random", "half", "more"]))
                if broken:
                    data = {
                        "random": draw(st.binary(max_size=64)),
                        "half": data[: len(data) // 2],
                        "more": data + b"\0",
                    }[broken]
                request.raw_input_contents.append(data)
            elif datatype in CONTENTS_FIELD and draw(st.integers(0, 5)):
                container = getattr(tensor.contents, CONTENTS_FIELD[datatype])
                if datatype in ("BOOL", "BYTES") or values.dtype.kind == "f":
                    container.extend(values.tolist())
                else:
                    container.extend(int(v) for v in values if -(2**31) <= int(v) < 2**31 or "64" in datatype)
        if draw(st.integers(0, 9)) == 0:
            request.raw_input_contents.append(draw(st.binary(max_size=16)))
        for key in draw(st.lists(st.sampled_from(PARAMETER_KEYS), max_size=3, unique=True)):
            value = draw(PARAMETER_VALUES)
            slow = key == "delay_ms" and isinstance(value, int) and not isinstance(value, bool) and 1 < value <= 60_000
            set_parameter(key, 60_001 if slow else value, request.parameters[key])
        for output in draw(st.lists(SHORT_TEXTS, max_size=2)):
            request.outputs.add(name=output)
        return request

    return build()


@functools.cache
def mangled(valid: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    """Bytes on the wire: a message from `valid` serialized and then cut short or with bytes flipped,
    or random bytes."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(valid).SerializeToString())
        how = draw(st.sampled_from(["random", "cut", "flip", "flip"]))
        if how == "random" or not data:
            return draw(st.binary(max_size=256))
        if how == "cut":
            return bytes(data[: draw(st.integers(0, len(data) - 1))])
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)

    return build()
