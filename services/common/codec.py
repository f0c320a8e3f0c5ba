"""The Open Inference Protocol tensor codec: v2 tensors <-> numpy.

Requests may carry data in `contents` (the repeated field of the datatype) or in
`raw_input_contents` (little-endian, row-major bytes; BYTES elements each prefixed by a 4-byte
little-endian length); one form for the whole request. Responses always use `raw_output_contents`,
as Triton does, because stock tritonclient reads outputs only from there.

BF16 decodes to `ml_dtypes.bfloat16` (as tritonclient does); an output array of another float
dtype declared BF16 is rounded to nearest even. BYTES decodes to a numpy object array of `bytes`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from math import prod

import ml_dtypes
import numpy as np

from maas.inference import grpc_service_pb2 as pb
from services.common.errors import InvalidInput, Overloaded

MAX_ELEMENTS = 1 << 31
"""Most elements of one tensor; also the most its nonzero dimensions may multiply to, so that every
accepted shape is one numpy can build (it refuses sizes over 2^63 bytes, even of empty arrays)."""
MAX_DIMENSIONS = 64
"""numpy's limit on dimensions (NPY_MAXDIMS)."""
MAX_BYTES_ELEMENTS = 1 << 20
"""Most BYTES elements in one request: each becomes a Python object of about 50 bytes, however short."""
MAX_CONTENTS_VALUES = 1 << 20
"""Most values in `contents` in one request: a one-byte varint there becomes eight bytes in memory, so
larger tensors must come in `raw_input_contents` (as stock clients send them)."""

FIXED_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
DATATYPES = (*FIXED_DTYPES, "BYTES")
_DATATYPE_OF = {dtype: name for name, dtype in FIXED_DTYPES.items()}

CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_CONTENTS_FIELDS = frozenset(CONTENTS_FIELD.values())
_LENGTH_PREFIX = struct.Struct("<I")


@dataclass(frozen=True)
class Tensor:
    """A named tensor with its v2 datatype. `array.shape` is the tensor's shape."""

    name: str
    datatype: str
    array: np.ndarray

    @classmethod
    def of(cls, name: str, array: np.ndarray) -> Tensor:
        """Wrap an array, taking the v2 datatype from its numpy dtype.

        Raises:
            ValueError: the dtype has no v2 datatype.
        """
        return cls(name, datatype_of(array), array)


def datatype_of(array: np.ndarray) -> str:
    """Return the v2 datatype name of a numpy array.

    Raises:
        ValueError: the dtype has no v2 equivalent.
    """
    if array.dtype.kind in "OSU":
        return "BYTES"
    dtype = array.dtype if array.dtype.isnative else array.dtype.newbyteorder("=")
    try:
        return _DATATYPE_OF[dtype]
    except KeyError:
        raise ValueError(f"numpy dtype {array.dtype} has no v2 datatype") from None


def element_count(name: str, shape: Sequence[int]) -> int:
    """Return the number of elements of `shape`, refusing shapes numpy cannot build and absurd sizes.

    Raises:
        InvalidInput: more than 64 dimensions, a negative dimension, or more than 2^31 elements (or
            nonzero dimensions that multiply to more).
    """
    if len(shape) > MAX_DIMENSIONS:
        raise InvalidInput(
            f"input '{name}': shape has {len(shape)} dimensions; at most {MAX_DIMENSIONS}", field=f"inputs[{name}]"
        )
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension", field=f"inputs[{name}]")
    count = prod(shape)
    if count > MAX_ELEMENTS:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} has {count} elements; at most {MAX_ELEMENTS}", field=f"inputs[{name}]"
        )
    if prod(d for d in shape if d) > MAX_ELEMENTS:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} is too large: its nonzero dimensions multiply to over {MAX_ELEMENTS}",
            field=f"inputs[{name}]",
        )
    return count


def decode_bytes(name: str, raw: bytes, count: int, limit: int = MAX_BYTES_ELEMENTS) -> np.ndarray:
    """Split length-prefixed BYTES data into an object array of `count` elements.

    Every element needs at least its 4-byte length, so a count the data cannot hold is refused
    before anything is allocated; elements are then read one by one, each from bytes that are there.

    Args:
        name: the input's name, for errors.
        raw: the input's raw contents.
        count: the elements its shape declares.
        limit: most elements allowed (what is left of the request's `MAX_BYTES_ELEMENTS`).

    Raises:
        InvalidInput: the data does not hold exactly `count` well-formed elements.
        Overloaded: `count` is over `limit`.
    """
    view = memoryview(raw)
    if count * _LENGTH_PREFIX.size > len(view):
        raise InvalidInput(
            f"input '{name}': {count} BYTES elements need at least {count * _LENGTH_PREFIX.size} bytes "
            f"(a 4-byte length each), got {len(view)}",
            field=f"inputs[{name}]",
        )
    _check_bytes_limit(name, count, limit)
    elements = []
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(
                f"input '{name}': BYTES data ends after {i} of {count} elements", field=f"inputs[{name}]"
            )
        (length,) = _LENGTH_PREFIX.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(
                f"input '{name}': BYTES element {i} declares {length} bytes but {len(view) - offset} remain",
                field=f"inputs[{name}]",
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise InvalidInput(
            f"input '{name}': {len(view) - offset} bytes left over after {count} BYTES elements",
            field=f"inputs[{name}]",
        )
    return _object_array(elements)


def _check_bytes_limit(name: str, count: int, limit: int) -> None:
    if count > limit:
        raise Overloaded(
            f"input '{name}': the request's BYTES inputs hold over {MAX_BYTES_ELEMENTS} elements, "
            "the limit per request",
            field=f"inputs[{name}]",
        )


def _object_array(elements: list) -> np.ndarray:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array


def encode_bytes(array: np.ndarray) -> bytes:
    """Serialize a BYTES tensor: each element (bytes, or str as UTF-8) after its 4-byte length."""
    parts = []
    for item in array.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH_PREFIX.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _decode_raw(
    name: str, datatype: str, shape: list[int], raw: bytes, bytes_limit: int = MAX_BYTES_ELEMENTS
) -> np.ndarray:
    count = element_count(name, shape)
    if datatype == "BYTES":
        return decode_bytes(name, raw, count, bytes_limit).reshape(shape)
    dtype = FIXED_DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{name}': {datatype} shape {shape} needs {expected} bytes of raw data, got {len(raw)}",
            field=f"inputs[{name}]",
        )
    array = np.frombuffer(raw, dtype=dtype)
    if datatype == "BOOL" and count and np.frombuffer(raw, dtype=np.uint8).max() > 1:
        raise InvalidInput(f"input '{name}': BOOL raw data must hold only bytes 0 and 1", field=f"inputs[{name}]")
    return array.reshape(shape)


def _decode_contents(
    name: str, datatype: str, shape: list[int], contents: pb.InferTensorContents, bytes_limit: int, limit: int
) -> np.ndarray:
    count = element_count(name, shape)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input '{name}': {datatype} has no contents field; send it in raw_input_contents", field=f"inputs[{name}]"
        )
    stray = [f.name for f, _ in contents.ListFields() if f.name != field and f.name in _ALL_CONTENTS_FIELDS]
    if stray:
        raise InvalidInput(
            f"input '{name}' is {datatype} (data in {field}) but sets {', '.join(stray)}", field=f"inputs[{name}]"
        )
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {shape} needs {count} values in {field}, got {len(values)}", field=f"inputs[{name}]"
        )
    if count > limit:
        raise Overloaded(
            f"input '{name}': the request's contents hold over {MAX_CONTENTS_VALUES} values, the limit per request; "
            "send large tensors in raw_input_contents",
            field=f"inputs[{name}].contents",
        )
    if datatype == "BYTES":
        _check_bytes_limit(name, count, bytes_limit)
        return _object_array(list(values)).reshape(shape)
    dtype = FIXED_DTYPES[datatype]
    if field in ("int_contents", "uint_contents") and count:
        wide = np.fromiter(values, dtype=np.int64, count=count)
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidInput(
                f"input '{name}': {datatype} values must lie in [{info.min}, {info.max}]", field=f"inputs[{name}]"
            )
        return wide.astype(dtype).reshape(shape)
    return np.fromiter(values, dtype=dtype, count=count).reshape(shape)


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, Tensor]:
    """Decode every input of a ModelInferRequest, in request order.

    Returns:
        Input name -> tensor.

    Every size the request declares is checked against the data it carries before anything is
    allocated for it.

    Raises:
        InvalidInput: unknown datatype, bad shape, data size mismatch, duplicate names, inputs
            without data, or raw and typed contents mixed in one request.
        Overloaded: BYTES inputs with more than `MAX_BYTES_ELEMENTS` elements in all, or more than
            `MAX_CONTENTS_VALUES` values in `contents`.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give one per input",
            field="raw_input_contents",
        )
    tensors: dict[str, Tensor] = {}
    bytes_left, contents_left = MAX_BYTES_ELEMENTS, MAX_CONTENTS_VALUES
    for i, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
        if name in tensors:
            raise InvalidInput(f"input '{name}' appears more than once", field=f"inputs[{name}]")
        if datatype not in DATATYPES:
            raise InvalidInput(
                f"input '{name}': unknown datatype '{datatype}'; expected one of {', '.join(DATATYPES)}",
                field=f"inputs[{name}].datatype",
            )
        has_contents = tensor.HasField("contents")
        if raw and has_contents:
            raise InvalidInput(
                f"input '{name}' sets contents while the request uses raw_input_contents; use one form for all inputs",
                field=f"inputs[{name}].contents",
            )
        if raw:
            array = _decode_raw(name, datatype, shape, raw[i], bytes_left)
        elif has_contents or element_count(name, shape) == 0:
            array = _decode_contents(name, datatype, shape, tensor.contents, bytes_left, contents_left)
            contents_left -= array.size
        else:
            raise InvalidInput(
                f"input '{name}' has no data: set contents or raw_input_contents", field=f"inputs[{name}]"
            )
        if datatype == "BYTES":
            bytes_left -= array.size
        tensors[name] = Tensor(name, datatype, array)
    return tensors


def raw_bytes(tensor: Tensor) -> bytes:
    """A tensor's data as v2 raw contents: little-endian row-major, BYTES length-prefixed.

    Raises:
        ValueError: the datatype is unknown.
    """
    return _raw_array(tensor).tobytes()


_RAW_OUTPUT_TAG = bytes([6 << 3 | 2])
"""`raw_output_contents` (field 6, length-delimited) of ModelInferResponse, in wire form."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@dataclass(frozen=True)
class InferReply:
    """A ModelInferResponse whose output data stays in its arrays until the response is serialized.

    `SerializeToString` writes the wire form a message holding the same outputs would have, copying
    each output's data once. Building that message instead copies the data into it,
    and protobuf's serializer copies it again into a buffer it grows as it goes: for a large response
    (a tokenizer's 1,024 x 256 ids and masks are 6 MB) that is tens of milliseconds of the event loop.
    Picklable, so a Ray replica can hand it to its front.
    """

    head: pb.ModelInferResponse
    """The response without `raw_output_contents`: its `outputs` list names, datatypes and shapes."""
    data: tuple[np.ndarray, ...]
    """Each output's raw contents, as a flat uint8 array, in the order of `head.outputs`."""

    @property
    def model_version(self) -> str:
        """The version that answered."""
        return self.head.model_version

    def SerializeToString(self) -> bytes:
        """The response in wire form (protobuf's method name, so whatever serializes a message serializes this
        too): `raw_output_contents` after the head's fields, as protobuf orders them."""
        parts: list[bytes | memoryview] = [self.head.SerializeToString()]
        for data in self.data:
            parts += (_RAW_OUTPUT_TAG, _varint(data.nbytes), memoryview(data))
        return b"".join(parts)

    def message(self) -> pb.ModelInferResponse:
        """The response as a message (for callers in this process that read it)."""
        return pb.ModelInferResponse.FromString(self.SerializeToString())


def infer_reply(head: pb.ModelInferResponse, tensors: Iterable[Tensor]) -> InferReply:
    """A response of `head` (model, version, id) with `tensors` as its outputs in raw contents.

    Raises:
        ValueError: a tensor's datatype is unknown (a model bug, not a caller's).
    """
    data = []
    for tensor in tensors:
        head.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.array.shape)
        data.append(_raw_array(tensor))
    return InferReply(head, tuple(data))


def as_message(response: pb.ModelInferResponse | InferReply) -> pb.ModelInferResponse:
    """A v2 response as a message, whether it came from a model here (`InferReply`) or from another service."""
    return response.message() if isinstance(response, InferReply) else response


def _raw_array(tensor: Tensor) -> np.ndarray:
    if tensor.datatype == "BYTES":
        return np.frombuffer(encode_bytes(tensor.array), dtype=np.uint8)
    if tensor.datatype not in FIXED_DTYPES:
        raise ValueError(f"tensor '{tensor.name}' has unknown datatype {tensor.datatype}")
    return np.ascontiguousarray(tensor.array, dtype=FIXED_DTYPES[tensor.datatype]).reshape(-1).view(np.uint8)


def encode_inputs(request: pb.ModelInferRequest, tensors: Iterable[Tensor]) -> None:
    """Append `tensors` to a ModelInferRequest as inputs with raw_input_contents (the client side).

    Raises:
        ValueError: a tensor's datatype is unknown.
    """
    for tensor in tensors:
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.array.shape)
        request.raw_input_contents.append(raw_bytes(tensor))


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, Tensor]:
    """Decode the outputs of a ModelInferResponse with raw_output_contents (the client side).

    Returns:
        Output name -> tensor, in response order.

    Raises:
        InvalidInput: an output's data does not match its datatype and shape.
    """
    return {
        out.name: Tensor(out.name, out.datatype, _decode_raw(out.name, out.datatype, list(out.shape), raw))
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }
