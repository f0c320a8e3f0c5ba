"""Tokenizer servicers: the typed `maas.tokenizer.v1` API and the v2 model `tokenizer`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np

from maas.tokenizer.v1 import tokenizer_pb2 as pb
from maas.tokenizer.v1 import tokenizer_pb2_grpc as pb_grpc
from services.common.codec import Tensor
from services.common.echo import EchoModel
from services.common.errors import InvalidInput, Overloaded
from services.common.interceptor import label_model
from services.common.models import InferRequest, InferResult, ModelRegistry, TensorSpec
from services.common.repository import RepositoryModel, VersionConfig
from services.common.service import Service, TypedService
from services.common.settings import TextLimits, TokenizerSettings
from services.tokenizer.model import MAX_LENGTH_LIMIT, Padding, WordPieceTokenizer

T = TypeVar("T")
MODEL_NAME = "tokenizer"
PLATFORM = "huggingface_tokenizers"
INPUTS = (TensorSpec("TEXT", "BYTES", (-1,)), TensorSpec("TEXT_PAIR", "BYTES", (-1,), optional=True))
OUTPUTS = tuple(TensorSpec(name, "INT64", (-1, -1)) for name in ("INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS"))
PADDING = {
    pb.PADDING_UNSPECIFIED: Padding.LONGEST,
    pb.PADDING_LONGEST: Padding.LONGEST,
    pb.PADDING_MAX_LENGTH: Padding.MAX_LENGTH,
    pb.PADDING_NONE: Padding.NONE,
}


def check_texts(field: str, texts: Sequence[str], limits: TextLimits) -> None:
    """Refuse requests over the text limits.

    Raises:
        Overloaded: too many texts, or a text over the byte limit.
    """
    if len(texts) > limits.max_texts:
        raise Overloaded(f"{field} has {len(texts)} texts; the limit is {limits.max_texts} per request", field=field)
    for i, text in enumerate(texts):
        size = len(text.encode()) if isinstance(text, str) else len(text)
        if size > limits.max_text_bytes:
            raise Overloaded(
                f"{field}[{i}] is {size} bytes; the limit is {limits.max_text_bytes} per text", field=f"{field}[{i}]"
            )


def check_max_length(value: int) -> int:
    """Validate a requested max_length.

    Raises:
        InvalidInput: outside [2, 512].
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_LENGTH_LIMIT:
        raise InvalidInput(
            f"max_length must be an integer in [2, {MAX_LENGTH_LIMIT}], got {value!r}", field="max_length"
        )
    return value


def decode_utf8(field: str, items: np.ndarray) -> list[str]:
    """Decode a BYTES tensor's elements as UTF-8.

    Raises:
        InvalidInput: an element is not valid UTF-8.
    """
    texts = []
    for i, item in enumerate(items):
        try:
            texts.append(item.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"{field}[{i}] is not valid UTF-8: byte 0x{item[exc.start]:02x} at offset {exc.start}",
                field=f"{field}[{i}]",
            ) from None
    return texts


def invalid_on_value_error(fn: Callable[..., T], *args: Any) -> T:
    """Call `fn`, turning its ValueError into INVALID_ARGUMENT."""
    try:
        return fn(*args)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="inputs") from None


class TokenizerModel(RepositoryModel):
    """v2 model `tokenizer`: TEXT (+ TEXT_PAIR) BYTES [N] -> INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS INT64 [N, L].

    Request parameters: `max_length` (default from settings, at most 512), `truncation` (default true).
    Sequences are padded with id 0 to the longest in the request.
    """

    name = MODEL_NAME
    platform = PLATFORM
    inputs = INPUTS
    outputs = OUTPUTS

    missing_hint = "; run `maas models export-tokenizer`"

    def __init__(self, repository: Path, limits: TextLimits) -> None:
        super().__init__(repository)
        self.limits = limits

    def build(self, directory: Path, config: VersionConfig) -> WordPieceTokenizer:
        """Load the version's tokenizer.json."""
        return WordPieceTokenizer(directory)

    async def infer(self, request: InferRequest) -> InferResult:
        """Tokenize the TEXT (and TEXT_PAIR) elements."""
        tokenizer: WordPieceTokenizer = self.loaded(request.version)
        texts = request.inputs["TEXT"].array
        check_texts("TEXT", texts, self.limits)
        pairs = None
        if "TEXT_PAIR" in request.inputs:
            pairs = request.inputs["TEXT_PAIR"].array
            check_texts("TEXT_PAIR", pairs, self.limits)
            if len(pairs) != len(texts):
                raise InvalidInput(
                    f"TEXT_PAIR has {len(pairs)} elements for {len(texts)} in TEXT; give one per text",
                    field="inputs[TEXT_PAIR]",
                )
            pairs = decode_utf8("TEXT_PAIR", pairs)
        max_length = check_max_length(request.parameters.get("max_length", self.limits.default_max_length))
        truncation = request.parameters.get("truncation", True)
        if not isinstance(truncation, bool):
            raise InvalidInput(
                f"parameter 'truncation' must be a bool, got {truncation!r}", field="parameters.truncation"
            )
        ids, mask, types = invalid_on_value_error(
            tokenizer.encode_arrays, decode_utf8("TEXT", texts), pairs, max_length, truncation
        )
        outputs = [
            Tensor("INPUT_IDS", "INT64", ids),
            Tensor("ATTENTION_MASK", "INT64", mask),
            Tensor("TOKEN_TYPE_IDS", "INT64", types),
        ]
        return InferResult(outputs=outputs, version=request.version, batch_size=len(texts))


class TokenizerServicer(pb_grpc.TokenizerServiceServicer):
    """`maas.tokenizer.v1.TokenizerService` over the newest loaded version of `TokenizerModel`."""

    def __init__(self, model: TokenizerModel) -> None:
        self._model = model

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        label_model(MODEL_NAME)
        limits = self._model.limits
        check_texts("texts", request.texts, limits)
        pairs = list(request.text_pairs) or None
        if pairs is not None:
            check_texts("text_pairs", pairs, limits)
        max_length = check_max_length(request.max_length or limits.default_max_length)
        truncation = request.truncation if request.HasField("truncation") else True
        tokenizer: WordPieceTokenizer = self._model.loaded("")
        encodings = invalid_on_value_error(
            tokenizer.encode, list(request.texts), pairs, max_length, truncation, PADDING[request.padding]
        )
        return pb.TokenizeResponse(
            encodings=[
                pb.Encoding(
                    input_ids=e.input_ids,
                    attention_mask=e.attention_mask,
                    token_type_ids=e.token_type_ids,
                    offset_starts=[start for start, _ in e.offsets],
                    offset_ends=[end for _, end in e.offsets],
                    tokens=e.tokens,
                )
                for e in encodings
            ]
        )

    async def Detokenize(
        self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetokenizeResponse:
        label_model(MODEL_NAME)
        if len(request.sequences) > self._model.limits.max_texts:
            raise Overloaded(
                f"sequences has {len(request.sequences)} entries; the limit is {self._model.limits.max_texts}",
                field="sequences",
            )
        tokenizer: WordPieceTokenizer = self._model.loaded("")
        texts = invalid_on_value_error(
            tokenizer.decode, [s.ids for s in request.sequences], not request.keep_special_tokens
        )
        return pb.DetokenizeResponse(texts=texts)


def build_service(settings: TokenizerSettings) -> Service:
    """The tokenizer service: typed TokenizerService, v2 `tokenizer` and `echo`."""
    model = TokenizerModel(settings.model_repository, settings)
    typed = TypedService(
        full_name=pb.DESCRIPTOR.services_by_name["TokenizerService"].full_name,
        servicer=TokenizerServicer(model),
        add_to_server=pb_grpc.add_TokenizerServiceServicer_to_server,
    )
    return Service("tokenizer", ModelRegistry([EchoModel(), model]), [typed])
