"""The typed `maas.tokenizer.v1` API over the v2 model `tokenizer`.

A large request is tokenized and answered on worker threads, in parts (see `services.common.offload`).
"""

from __future__ import annotations

import grpc

from maas.tokenizer.v1 import tokenizer_pb2 as pb
from maas.tokenizer.v1 import tokenizer_pb2_grpc as pb_grpc
from services.common import offload, timing
from services.common.errors import InvalidInput, Overloaded
from services.common.interceptor import label_model, received_bytes
from services.common.versions import ModelRegistry
from services.tokenizer.model import (
    Encoding,
    Padding,
    WordPieceTokenizer,
    check_max_length,
    invalid_on_value_error,
    text_costs,
)
from services.tokenizer.spec import MODEL_NAME, TokenizerSettings

PADDING = {
    pb.PADDING_UNSPECIFIED: Padding.LONGEST,
    pb.PADDING_LONGEST: Padding.LONGEST,
    pb.PADDING_MAX_LENGTH: Padding.MAX_LENGTH,
    pb.PADDING_NONE: Padding.NONE,
}


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
    """`maas.tokenizer.v1.TokenizerService` over the default loaded version of `tokenizer`."""

    def __init__(self, models: ModelRegistry, settings: TokenizerSettings) -> None:
        self._model = models.get(MODEL_NAME)
        self._limits = settings

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        label_model(MODEL_NAME)
        limits = self._limits

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
        tokenizer: WordPieceTokenizer = self._model.get("").model

        def encode(part: slice) -> list[Encoding]:
            second = None if pairs is None else pairs[part]
            return invalid_on_value_error(tokenizer.encode, texts[part], second, max_length, truncation, Padding.NONE)

        with timing.computing(len(texts)):
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
        limits = self._limits
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
        tokenizer: WordPieceTokenizer = self._model.get("").model

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

        with timing.computing(len(sequences)):
            parts = await offload.map_chunks(decode, [8 * count for count in counts], limits.inline_max_bytes)
        return pb.DetokenizeResponse(texts=[text for part in parts for text in part])
