from maas.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyTextRequest(_message.Message):
    __slots__ = ("items", "top_k", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenizedText]
    top_k: int
    model_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.TokenizedText, _Mapping]]] = ..., top_k: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...

class ClassifyTextResponse(_message.Message):
    __slots__ = ("results", "model_version")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.Classification]
    model_version: str
    def __init__(self, results: _Optional[_Iterable[_Union[_common_pb2.Classification, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...
