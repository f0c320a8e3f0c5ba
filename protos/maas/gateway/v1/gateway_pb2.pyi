from maas.common.v1 import common_pb2 as _common_pb2
from maas.tokenizer.v1 import tokenizer_pb2 as _tokenizer_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TextModel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEXT_MODEL_UNSPECIFIED: _ClassVar[TextModel]
    TEXT_MODEL_LSTM: _ClassVar[TextModel]
    TEXT_MODEL_TRANSFORMER: _ClassVar[TextModel]
TEXT_MODEL_UNSPECIFIED: TextModel
TEXT_MODEL_LSTM: TextModel
TEXT_MODEL_TRANSFORMER: TextModel

class ClassifyImageRequest(_message.Message):
    __slots__ = ("images", "top_k", "model_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    top_k: int
    model_version: str
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., top_k: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...

class ClassifyImageResponse(_message.Message):
    __slots__ = ("results", "model_version")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.Classification]
    model_version: str
    def __init__(self, results: _Optional[_Iterable[_Union[_common_pb2.Classification, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class ClassifyTextRequest(_message.Message):
    __slots__ = ("texts", "model", "top_k", "model_version")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    model: TextModel
    top_k: int
    model_version: str
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., model: _Optional[_Union[TextModel, str]] = ..., top_k: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...

class ClassifyTextResponse(_message.Message):
    __slots__ = ("results", "model", "model_version")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.Classification]
    model: TextModel
    model_version: str
    def __init__(self, results: _Optional[_Iterable[_Union[_common_pb2.Classification, _Mapping]]] = ..., model: _Optional[_Union[TextModel, str]] = ..., model_version: _Optional[str] = ...) -> None: ...

class StreamClassifyTextResponse(_message.Message):
    __slots__ = ("index", "result", "model_version")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    index: int
    result: _common_pb2.Classification
    model_version: str
    def __init__(self, index: _Optional[int] = ..., result: _Optional[_Union[_common_pb2.Classification, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("texts", "model_version")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    model_version: str
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., model_version: _Optional[str] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "model_version")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[_common_pb2.Embedding]
    model_version: str
    def __init__(self, embeddings: _Optional[_Iterable[_Union[_common_pb2.Embedding, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...
