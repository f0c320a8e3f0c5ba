from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Padding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PADDING_UNSPECIFIED: _ClassVar[Padding]
    PADDING_LONGEST: _ClassVar[Padding]
    PADDING_MAX_LENGTH: _ClassVar[Padding]
    PADDING_NONE: _ClassVar[Padding]
PADDING_UNSPECIFIED: Padding
PADDING_LONGEST: Padding
PADDING_MAX_LENGTH: Padding
PADDING_NONE: Padding

class TokenizeRequest(_message.Message):
    __slots__ = ("texts", "text_pairs", "max_length", "truncation", "padding")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    TEXT_PAIRS_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    text_pairs: _containers.RepeatedScalarFieldContainer[str]
    max_length: int
    truncation: bool
    padding: Padding
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., text_pairs: _Optional[_Iterable[str]] = ..., max_length: _Optional[int] = ..., truncation: _Optional[bool] = ..., padding: _Optional[_Union[Padding, str]] = ...) -> None: ...

class Encoding(_message.Message):
    __slots__ = ("input_ids", "attention_mask", "token_type_ids", "offset_starts", "offset_ends", "tokens")
    INPUT_IDS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MASK_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_IDS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_STARTS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_ENDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    input_ids: _containers.RepeatedScalarFieldContainer[int]
    attention_mask: _containers.RepeatedScalarFieldContainer[int]
    token_type_ids: _containers.RepeatedScalarFieldContainer[int]
    offset_starts: _containers.RepeatedScalarFieldContainer[int]
    offset_ends: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, input_ids: _Optional[_Iterable[int]] = ..., attention_mask: _Optional[_Iterable[int]] = ..., token_type_ids: _Optional[_Iterable[int]] = ..., offset_starts: _Optional[_Iterable[int]] = ..., offset_ends: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("encodings",)
    ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    encodings: _containers.RepeatedCompositeFieldContainer[Encoding]
    def __init__(self, encodings: _Optional[_Iterable[_Union[Encoding, _Mapping]]] = ...) -> None: ...

class IdSequence(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DetokenizeRequest(_message.Message):
    __slots__ = ("sequences", "keep_special_tokens")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    KEEP_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[IdSequence]
    keep_special_tokens: bool
    def __init__(self, sequences: _Optional[_Iterable[_Union[IdSequence, _Mapping]]] = ..., keep_special_tokens: _Optional[bool] = ...) -> None: ...

class DetokenizeResponse(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...
