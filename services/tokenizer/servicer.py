"""Tokenizer servicers: the typed `maas.tokenizer.v1` API and the v2 model `tokenizer`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np

from maas.tokenizer.v1 import tokenizer_pb2 as pb
from maas.tokenizer.v1 import tokenizer_pb2_grpc as pb_grpc
from services.common import offload
from services.common.codec import Tensor
from services.common.echo import EchoModel
from services.common.errors import InvalidInput, Overloaded
from services.common.interceptor import label_model, received_bytes
from services.common.models import InferRequest, InferResult, ModelRegistry, TensorSpec
from services.common.repository import RepositoryModel, VersionConfig
from services.common.service import Service, TypedService
from services.common.settings import TextLimits, TokenizerSettings
from services.tokenizer.model import MAX_LENGTH_LIMIT, Encoding, Padding, WordPieceTokenizer

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


def check_texts(field: str, texts: Sequence[str | bytes], limits: TextLimits) -> list[int]:
    """Refuse too many texts, or a text over the byte limit.

    Returns:
        Each text's size in UTF-8 bytes.

    Raises:
        Overloaded: too many texts, or a text over the byte limit.
    """
    if len(texts) > limits.max_texts:
        raise Overloaded(f"{field} has {len(texts)} texts; the limit is {limits.max_texts} per request", field=field)
    sizes = [len(text.encode()) if isinstance(text, str) else len(text) for text in texts]
    for i, size in enumerate(sizes):
        if size > limits.max_text_bytes:
            raise Overloaded(
                f"{field}[{i}] is {size} bytes; the limit is {limits.max_text_bytes} per text", field=f"{field}[{i}]"
            )
    return sizes


def text_costs(
    limits: TextLimits, texts: tuple[str, Sequence[str | bytes]], pairs: tuple[str, Sequence[str | bytes]] | None
) -> list[int]:
    """Check a request's texts (and second texts) against the limits, before any of them is tokenized.

    Args:
        limits: the limits.
        texts: the texts' field name and the texts.
        pairs: the second texts' field name and the second texts, or None.

    Returns:
        Each text's size in UTF-8 bytes, with its second text's.

    Raises:
        InvalidInput: second texts given, but not one per text.
        Overloaded: as `check_texts`, or more bytes in all than the request limit.
    """
    costs = check_texts(*texts, limits)
    if pairs is not None:
        if len(pairs[1]) != len(costs):
            raise InvalidInput(
                f"{pairs[0]} has {len(pairs[1])} elements for {len(costs)} in {texts[0]}; give one per text",
                field=pairs[0],
            )
        costs = [a + b for a, b in zip(costs, check_texts(*pairs, limits), strict=True)]
    if sum(costs) > limits.max_request_bytes:
        raise Overloaded(
            f"the texts hold {sum(costs)} bytes in all; the limit is {limits.max_request_bytes} per request",
            field=texts[0],
        )
    return costs


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


def decode_utf8(field: str, items: np.ndarray, start: int = 0) -> list[str]:
    """Decode a BYTES tensor's elements as UTF-8.

    Args:
        field: the tensor's name, for errors.
        items: the elements.
        start: the index of the first element in the whole tensor, for errors.

    Raises:
        InvalidInput: an element is not valid UTF-8.
    """
    texts = []
    for i, item in enumerate(items, start):
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


def stacked(parts: Sequence[tuple[np.ndarray, ...]], pad_id: int) -> tuple[np.ndarray, ...]:
    """Stack the ids, mask and type ids of texts tokenized in parts, padding each part to the longest.

    Args:
        parts: each part's INT64 [N, L] arrays (ids, mask, type ids), padded to that part's longest.
        pad_id: the id that pads `ids`; mask and type ids pad with 0.
    """
    if len(parts) == 1:
        return parts[0]
    width = max(part[0].shape[1] for part in parts)
    return tuple(
        np.concatenate(
            [np.pad(part[k], [(0, 0), (0, width - part[k].shape[1])], constant_values=pad) for part in parts]
        )
        for k, pad in enumerate((pad_id, 0, 0))
    )


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

    def __init__(self, repository: Path, settings: TokenizerSettings) -> None:
        super().__init__(repository)
        self.limits = settings

    def build(self, directory: Path, config: VersionConfig) -> WordPieceTokenizer:
        """Load the version's tokenizer.json."""
        return WordPieceTokenizer(directory)

    async def infer(self, request: InferRequest) -> InferResult:
        """Tokenize the TEXT (and TEXT_PAIR) elements; on worker threads, in parts, if they are large."""
        tokenizer: WordPieceTokenizer = self.loaded(request.version)
        texts = request.inputs["TEXT"].array
        pairs = request.inputs["TEXT_PAIR"].array if "TEXT_PAIR" in request.inputs else None
        costs = text_costs(self.limits, ("TEXT", texts), None if pairs is None else ("TEXT_PAIR", pairs))
        max_length = check_max_length(request.parameters.get("max_length", self.limits.default_max_length))
        truncation = request.parameters.get("truncation", True)
        if not isinstance(truncation, bool):
            raise InvalidInput(
                f"parameter 'truncation' must be a bool, got {truncation!r}", field="parameters.truncation"
            )

        def encode(part: slice) -> tuple[np.ndarray, ...]:
            first = decode_utf8("TEXT", texts[part], part.start)
            second = None if pairs is None else decode_utf8("TEXT_PAIR", pairs[part], part.start)
            return invalid_on_value_error(tokenizer.encode_arrays, first, second, max_length, truncation)

        parts = await offload.map_chunks(encode, costs, self.limits.inline_max_bytes)
        ids, mask, types = stacked(parts, tokenizer.pad_id)
        outputs = [
            Tensor("INPUT_IDS", "INT64", ids),
            Tensor("ATTENTION_MASK", "INT64", mask),
            Tensor("TOKEN_TYPE_IDS", "INT64", types),
        ]
        return InferResult(outputs=outputs, version=request.version, batch_size=len(texts))


def _encoding(encoding: Encoding) -> pb.Encoding:
    return pb.Encoding(
        input_ids=encoding.input_ids,
        attention_mask=encoding.attention_mask,
        token_type_ids=encoding.token_type_ids,
        offset_starts=[start for start, _ in encoding.offsets],
        offset_ends=[end for _, end in encoding.offsets],
        tokens=encoding.tokens,
    )


class TokenizerServicer(pb_grpc.TokenizerServiceServicer):
    """`maas.tokenizer.v1.TokenizerService` over the newest loaded version of `TokenizerModel`.

    A large request is tokenized and answered on worker threads, in parts (see `services.common.offload`).
    """

    def __init__(self, model: TokenizerModel) -> None:
        self._model = model

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        label_model(MODEL_NAME)
        limits = self._model.limits

        def texts_and_costs() -> tuple[list[str], list[str] | None, list[int]]:
            texts, pairs = list(request.texts), list(request.text_pairs) or None
            return texts, pairs, text_costs(limits, ("texts", texts), None if pairs is None else ("text_pairs", pairs))

        texts, pairs, costs = await offload.run(texts_and_costs, received_bytes(request), limits.inline_max_bytes)
        max_length = check_max_length(request.max_length or limits.default_max_length)
        truncation = request.truncation if request.HasField("truncation") else True
        padding = PADDING.get(request.padding)
        if padding is None:
            raise InvalidInput(
                f"padding {request.padding} is not a Padding value; use one of "
                + ", ".join(pb.Padding.Name(value) for value in PADDING),
                field="padding",
            )
        tokenizer: WordPieceTokenizer = self._model.loaded("")

        def encode(part: slice) -> list[Encoding]:
            second = None if pairs is None else pairs[part]
            return invalid_on_value_error(tokenizer.encode, texts[part], second, max_length, truncation, Padding.NONE)

        parts = await offload.map_chunks(encode, costs, limits.inline_max_bytes)
        encodings = [encoding for part in parts for encoding in part]
        return await offload.run(
            lambda: pb.TokenizeResponse(encodings=map(_encoding, tokenizer.pad(encodings, padding, max_length))),
            sum(costs),
            limits.inline_max_bytes,
        )

    async def Detokenize(
        self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetokenizeResponse:
        label_model(MODEL_NAME)
        limits = self._model.limits
        sequences = request.sequences
        if len(sequences) > limits.max_texts:
            raise Overloaded(
                f"sequences has {len(sequences)} entries; the limit is {limits.max_texts}", field="sequences"
            )
        counts = [len(sequence.ids) for sequence in sequences]
        if sum(counts) > limits.max_request_tokens:
            raise Overloaded(
                f"sequences hold {sum(counts)} token ids in all; the limit is {limits.max_request_tokens} per request",
                field="sequences",
            )
        tokenizer: WordPieceTokenizer = self._model.loaded("")

        def decode(part: slice) -> list[str]:
            ids = [list(sequence.ids) for sequence in sequences[part]]
            for i, row in enumerate(ids, part.start):
                bad = [t for t in row if not 0 <= t < tokenizer.vocab_size]
                if bad:
                    raise InvalidInput(
                        f"sequences[{i}] has ids outside [0, {tokenizer.vocab_size}): {bad[:5]}",
                        field=f"sequences[{i}].ids",
                    )
            return tokenizer.decode(ids, not request.keep_special_tokens)

        parts = await offload.map_chunks(decode, [8 * count for count in counts], limits.inline_max_bytes)
        return pb.DetokenizeResponse(texts=[text for part in parts for text in part])


def build_service(settings: TokenizerSettings) -> Service:
    """The tokenizer service: typed TokenizerService, v2 `tokenizer` and `echo`."""
    model = TokenizerModel(settings.model_repository, settings)
    typed = TypedService(
        full_name=pb.DESCRIPTOR.services_by_name["TokenizerService"].full_name,
        servicer=TokenizerServicer(model),
        add_to_server=pb_grpc.add_TokenizerServiceServicer_to_server,
    )
    return Service("tokenizer", ModelRegistry([EchoModel(), model]), [typed])
