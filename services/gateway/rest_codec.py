"""The Open Inference Protocol's REST binding, as messages: JSON (and binary tensors) <-> v2 protobuf.

An inference request is a JSON object, optionally followed by binary tensor data (the binary tensor
extension tritonclient uses): the header `Inference-Header-Content-Length` says how many bytes of the
body are JSON, and each input whose `parameters.binary_data_size` is set takes that many bytes of what
follows, in input order, in the same layout as gRPC's `raw_input_contents` (BYTES elements each after a
4-byte little-endian length). Every input becomes raw contents of one `ModelInferRequest`, so the
gateway serves it exactly as it serves gRPC.

A response's outputs are JSON `data` (row-major, flattened), or binary when the request asks for it
(`binary_data` on a requested output, or the request parameter `binary_data_output`); BYTES that are
not UTF-8 are always sent binary, since JSON strings cannot hold them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from maas.inference import grpc_service_pb2 as pb
from services.common.codec import FIXED_DTYPES, decode_bytes, element_count, encode_bytes
from services.common.errors import InvalidInput
from services.common.v2 import set_parameter

HEADER_LENGTH = "inference-header-content-length"
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"
HTTP_ONLY_PARAMETERS = frozenset({BINARY_DATA_OUTPUT, BINARY_DATA_SIZE, BINARY_DATA})
"""Parameters that say how tensors travel over HTTP: read here, never forwarded to a model."""
INTEGER_DATATYPES = frozenset(name for name, dtype in FIXED_DTYPES.items() if dtype.kind in "iu")
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})


@dataclass(frozen=True)
class InferCall:
    """A parsed REST inference request: the v2 request, and which outputs go back as binary data.

    Attributes:
        request: the v2 request, every input in raw contents.
        binary: output name -> whether it goes back binary (outputs not named: `binary_default`).
        binary_default: for outputs the request does not name.
    """

    request: pb.ModelInferRequest
    binary: Mapping[str, bool]
    binary_default: bool

    def binary_output(self, name: str) -> bool:
        """Whether output `name` goes back as binary data."""
        return self.binary.get(name, self.binary_default)


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object")
    return value


def _parameters(value: Any, where: str, into) -> dict[str, Any]:
    """Copy a JSON `parameters` object into a v2 parameter map, leaving out the HTTP-only ones; return it."""
    parameters = _object(value if value is not None else {}, f"{where} 'parameters'")
    for key, item in parameters.items():
        if key not in HTTP_ONLY_PARAMETERS:
            set_parameter(key, item, into[key])
    return parameters


def _flatten(data: Any, name: str) -> list:
    """The scalars of (possibly nested) JSON `data`, row-major."""
    if not isinstance(data, list):
        return [data]
    flat: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _json_raw(name: str, datatype: str, count: int, data: Any) -> bytes:
    """Encode an input's JSON `data` as v2 raw contents.

    Raises:
        InvalidInput: the values do not fit the datatype, or their number differs from the shape's.
    """
    values = _flatten(data, name)
    if len(values) != count:
        raise InvalidInput(f"input '{name}': its shape needs {count} values, 'data' has {len(values)}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            raise InvalidInput(f"input '{name}' is BYTES: give its 'data' as strings (or send it as binary data)")
        return encode_bytes(np.array([v.encode() for v in values], dtype=object))
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in values):
            raise InvalidInput(f"input '{name}' is BOOL: its 'data' must be true or false")
    elif datatype in INTEGER_DATATYPES:
        info = np.iinfo(FIXED_DTYPES[datatype])
        if not all(isinstance(v, int) and not isinstance(v, bool) and info.min <= v <= info.max for v in values):
            raise InvalidInput(f"input '{name}' is {datatype}: its 'data' must be integers in [{info.min}, {info.max}]")
    elif not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise InvalidInput(f"input '{name}' is {datatype}: its 'data' must be finite numbers")
    dtype = FIXED_DTYPES[datatype]
    wide = np.float64 if datatype in FLOAT_DATATYPES else dtype
    return np.asarray(values, dtype=wide).astype(dtype).tobytes()


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of integers")
    return value


def parse_infer(body: bytes, header_length: int | None, model: str, version: str) -> InferCall:
    """Parse a REST inference request into a v2 request with every input in raw contents.

    Args:
        body: the request body.
        header_length: the `Inference-Header-Content-Length` header (None: the whole body is JSON).
        model: the model named by the path.
        version: the version named by the path ("" = none).

    Returns:
        The v2 request and how its outputs go back.

    Raises:
        InvalidInput: the body is not a valid inference request (the message says what is wrong).
    """
    if header_length is None:
        header_length = len(body)
    if not 0 <= header_length <= len(body):
        raise InvalidInput(f"Inference-Header-Content-Length is {header_length}, but the body holds {len(body)} bytes")
    try:
        document = json.loads(body[:header_length])
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput(
            "the request body is not JSON: send an inference request object, optionally followed by binary "
            "tensor data whose start Inference-Header-Content-Length gives"
        ) from None
    document = _object(document, "the inference request")
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    request.id = request_id
    parameters = _parameters(document.get("parameters"), "the request's", request.parameters)
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("'inputs' must be a non-empty list of input tensors (name, shape, datatype, data)")
    binary = memoryview(body)[header_length:]
    offset = 0
    for index, item in enumerate(inputs):
        item = _object(item, f"inputs[{index}]")
        name, datatype = item.get("name"), item.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidInput(f"inputs[{index}] needs a 'name' and a 'datatype' (strings)")
        if datatype not in (*FIXED_DTYPES, "BYTES"):
            raise InvalidInput(
                f"input '{name}': unknown datatype '{datatype}'; expected one of {', '.join([*FIXED_DTYPES, 'BYTES'])}"
            )
        shape = _shape(item.get("shape"), name)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        size = _parameters(item.get("parameters"), f"input '{name}'", tensor.parameters).get(BINARY_DATA_SIZE)
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} does not fit the {len(binary) - offset} bytes of "
                    "binary data left in the body"
                )
            if "data" in item:
                raise InvalidInput(f"input '{name}' has both 'data' and binary_data_size; send one")
            request.raw_input_contents.append(bytes(binary[offset : offset + size]))
            offset += size
        elif "data" in item:
            request.raw_input_contents.append(_json_raw(name, datatype, element_count(name, shape), item["data"]))
        else:
            raise InvalidInput(f"input '{name}' has no data: give 'data', or binary_data_size and binary data")
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data follow the inputs that declared theirs")
    outputs = document.get("outputs") or []
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list of {name, parameters}")
    binary_outputs: dict[str, bool] = {}
    for index, item in enumerate(outputs):
        item = _object(item, f"outputs[{index}]")
        name = item.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"outputs[{index}] needs a 'name' (a string)")
        output = request.outputs.add(name=name)
        wanted = _parameters(item.get("parameters"), f"output '{name}'", output.parameters).get(BINARY_DATA, False)
        binary_outputs[name] = wanted is True
    default = parameters.get(BINARY_DATA_OUTPUT, False) is True
    return InferCall(request, binary_outputs, default)


def _json_data(output: pb.InferOutputTensor, raw: bytes) -> list | None:
    """An output's values as a flat JSON list, or None if they cannot be JSON (BYTES that are not UTF-8)."""
    count = element_count(output.name, list(output.shape))
    if output.datatype == "BYTES":
        try:
            return [item.decode() for item in decode_bytes(output.name, raw, count)]
        except UnicodeDecodeError:
            return None
    array = np.frombuffer(raw, dtype=FIXED_DTYPES[output.datatype])
    if output.datatype in ("FP16", "BF16"):
        array = array.astype(np.float32)
    return array.tolist()


def encode_infer(call: InferCall, response: pb.ModelInferResponse) -> tuple[bytes, int | None]:
    """A v2 response as a REST response body.

    Args:
        call: the parsed request (which outputs go back binary).
        response: the v2 response, outputs in raw contents.

    Returns:
        The body, and the length of its JSON part when binary data follows (None: all JSON).
    """
    outputs = []
    tail: list[bytes] = []
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": list(output.shape)}
        data = None if call.binary_output(output.name) else _json_data(output, raw)
        if data is None:
            entry["parameters"] = {BINARY_DATA_SIZE: len(raw)}
            tail.append(raw)
        else:
            entry["data"] = data
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        document["id"] = response.id
    document["outputs"] = outputs
    header = json.dumps(document, separators=(",", ":")).encode()
    if not tail:
        return header, None
    return b"".join([header, *tail]), len(header)


def to_json(message: Message) -> dict[str, Any]:
    """A v2 response message as the REST binding's JSON: proto field names, every field (defaults
    included), 64-bit integers as numbers, parameters as plain values.

    Args:
        message: a response message (metadata, index, statistics, ...).
    """
    return {field.name: _field_json(field, getattr(message, field.name)) for field in message.DESCRIPTOR.fields}


def _field_json(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {key: _field_json(value_field, item) for key, item in value.items()}
    if field.is_repeated:
        return [_scalar_json(field, item) for item in value]
    return _scalar_json(field, value)


def _scalar_json(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is None:
        return value
    if field.message_type.name in ("InferParameter", "ModelRepositoryParameter"):
        which = value.WhichOneof("parameter_choice")
        return getattr(value, which) if which else None
    return to_json(value)
