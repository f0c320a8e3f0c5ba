"""The typed `maas.tokenizer.v1` API over the v2 model `tokenizer`."""

from __future__ import annotations

import grpc

from maas.tokenizer.v1 import tokenizer_pb2 as pb
from maas.tokenizer.v1 import tokenizer_pb2_grpc as pb_grpc
from services.common import timing
from services.common.errors import Overloaded
from services.common.interceptor import label_model
from services.common.versions import ModelRegistry
from services.tokenizer.model import Padding, WordPieceTokenizer, check_max_length, check_texts, invalid_on_value_error
from services.tokenizer.spec import MODEL_NAME, TokenizerSettings

PADDING = {
    pb.PADDING_UNSPECIFIED: Padding.LONGEST,
    pb.PADDING_LONGEST: Padding.LONGEST,
    pb.PADDING_MAX_LENGTH: Padding.MAX_LENGTH,
    pb.PADDING_NONE: Padding.NONE,
}


class TokenizerServicer(pb_grpc.TokenizerServiceServicer):
    """`maas.tokenizer.v1.TokenizerService` over the default loaded version of `tokenizer`."""

    def __init__(self, models: ModelRegistry, settings: TokenizerSettings) -> None:
        self._model = models.get(MODEL_NAME)
        self._limits = settings

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        label_model(MODEL_NAME)
        limits = self._limits
        check_texts("texts", request.texts, limits)
        pairs = list(request.text_pairs) or None
        if pairs is not None:
            check_texts("text_pairs", pairs, limits)
        max_length = check_max_length(request.max_length or limits.default_max_length)
        truncation = request.truncation if request.HasField("truncation") else True
        tokenizer: WordPieceTokenizer = self._model.get("").model
        with timing.computing(len(request.texts)):
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
        if len(request.sequences) > self._limits.max_texts:
            raise Overloaded(
                f"sequences has {len(request.sequences)} entries; the limit is {self._limits.max_texts}",
                field="sequences",
            )
        tokenizer: WordPieceTokenizer = self._model.get("").model
        with timing.computing(len(request.sequences)):
            texts = invalid_on_value_error(
                tokenizer.decode, [s.ids for s in request.sequences], not request.keep_special_tokens
            )
        return pb.DetokenizeResponse(texts=texts)
