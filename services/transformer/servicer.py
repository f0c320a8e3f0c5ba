"""Transformer servicers: v2 `minilm_embed` and `minilm_sentiment`, and the typed `maas.transformer.v1` API."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from maas.common.v1 import common_pb2
from maas.transformer.v1 import transformer_pb2 as pb
from maas.transformer.v1 import transformer_pb2_grpc as pb_grpc
from services.common.batched import BatchedModel
from services.common.batcher import Arrays, Predict
from services.common.codec import Tensor
from services.common.echo import EchoModel
from services.common.errors import InvalidInput, Overloaded
from services.common.interceptor import label_model
from services.common.models import InferRequest, ModelRegistry
from services.common.repository import RepositoryError, VersionConfig, read_version
from services.common.service import Service, TypedService
from services.common.settings import TransformerSettings
from services.common.typed import top_labels
from services.transformer.model import ENCODER_ARCHITECTURE, HEAD_ARCHITECTURE, Encoder, Sentiment
from services.transformer.spec import (
    EMBED_MODEL,
    EMBED_OUTPUTS,
    MAX_SEQUENCE,
    PAD,
    PLATFORM,
    SENTIMENT_MODEL,
    SENTIMENT_OUTPUTS,
    SEQUENCE_INPUTS,
)


class EncoderCache:
    """Encoders loaded once per version directory, shared by the embedding and sentiment models."""

    def __init__(self) -> None:
        self._encoders: dict[Path, Encoder] = {}
        self._lock = threading.Lock()

    def get(self, directory: Path, bert_config: dict) -> Encoder:
        """The encoder of a `minilm_embed` version directory, loading it on first use."""
        key = directory.resolve()
        with self._lock:
            if key not in self._encoders:
                self._encoders[key] = Encoder(directory, bert_config)
            return self._encoders[key]


class _SequenceModel(BatchedModel):
    """A model over INPUT_IDS and ATTENTION_MASK INT64 [N, L], batched length-aware."""

    platform = PLATFORM
    inputs = SEQUENCE_INPUTS

    def __init__(self, repository: Path, settings: TransformerSettings, encoders: EncoderCache) -> None:
        batching = settings.batching(
            pad=PAD,
            length_aware=settings.length_aware,
            fixed_length=settings.fixed_length,
            max_batch_tokens=settings.max_batch_tokens,
        )
        super().__init__(repository, batching)
        self.max_rows = settings.max_texts
        self._encoders = encoders
        self._vocab_sizes: dict[str, int] = {}

    def _encoder(self, directory: Path, version: str) -> Encoder:
        config = read_version(directory, EMBED_MODEL)
        if config.architecture.get("name") != ENCODER_ARCHITECTURE:
            raise RepositoryError(f"{directory}: architecture is not {ENCODER_ARCHITECTURE!r}")
        encoder = self._encoders.get(directory, config.architecture["bert"])
        self._vocab_sizes[version] = encoder.vocab_size
        return encoder

    async def release_version(self, version: str, loaded: Any) -> None:
        """Also forget the unloaded version's vocabulary size."""
        await super().release_version(version, loaded)
        self._vocab_sizes.pop(version, None)

    def prepare(self, inputs: Arrays, config: VersionConfig) -> Arrays:
        """Check ids and mask, and drop the padding columns no sequence uses.

        Raises:
            InvalidInput: mismatched shapes, an empty batch, sequences over 512, ids outside the
                vocabulary, a mask that is not 0/1, or a row without tokens.
            Overloaded: more sequences than the per-request limit.
        """
        ids, mask = inputs["INPUT_IDS"], inputs["ATTENTION_MASK"]
        if ids.shape != mask.shape:
            raise InvalidInput(
                f"INPUT_IDS is {list(ids.shape)} but ATTENTION_MASK is {list(mask.shape)}; they must match"
            )
        rows, length = ids.shape
        if rows == 0 or length == 0:
            raise InvalidInput(f"empty batch: INPUT_IDS is {list(ids.shape)}")
        if rows > self.max_rows:
            raise Overloaded(f"{rows} sequences; the limit is {self.max_rows} per request")
        if length > MAX_SEQUENCE:
            raise InvalidInput(f"sequences of {length} tokens; at most {MAX_SEQUENCE}")
        vocab = self._vocab_sizes[str(config.version)]
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab:
            raise InvalidInput(f"INPUT_IDS must lie in [0, {vocab}); got values from {low} to {high}")
        if ((mask != 0) & (mask != 1)).any():
            raise InvalidInput("ATTENTION_MASK must hold only 0 and 1")
        used = mask.any(axis=0)
        empty = np.flatnonzero(~mask.any(axis=1))
        if empty.size:
            raise InvalidInput(f"row {int(empty[0])} has no tokens: its ATTENTION_MASK is all 0")
        width = int(np.flatnonzero(used)[-1]) + 1
        return {"INPUT_IDS": ids[:, :width], "ATTENTION_MASK": mask[:, :width]}


class EmbedModel(_SequenceModel):
    """v2 model `minilm_embed`: INPUT_IDS, ATTENTION_MASK INT64 [N, L] -> EMBEDDING FP32 [N, 384]."""

    name = EMBED_MODEL
    outputs = EMBED_OUTPUTS
    missing_hint = "; run `maas models export-minilm`"

    def build(self, directory: Path, config: VersionConfig) -> Predict:
        """The version's encoder as a predict function."""
        encoder = self._encoder(directory, directory.name)
        return lambda inputs: {"EMBEDDING": encoder.embed(inputs["INPUT_IDS"], inputs["ATTENTION_MASK"])}


class SentimentModel(_SequenceModel):
    """v2 model `minilm_sentiment`: INPUT_IDS, ATTENTION_MASK INT64 [N, L] -> PROBABILITIES FP32 [N, 2]."""

    name = SENTIMENT_MODEL
    outputs = SENTIMENT_OUTPUTS
    missing_hint = "; run `maas train transformer`"

    def build(self, directory: Path, config: VersionConfig) -> Predict:
        """The encoder the head was trained on, and the head."""
        if config.architecture.get("name") != HEAD_ARCHITECTURE:
            raise RepositoryError(f"{directory}: architecture is not {HEAD_ARCHITECTURE!r}")
        encoder_dir = self.repository / config.architecture["encoder"]
        sentiment = Sentiment(self._encoder(encoder_dir, directory.name), directory, len(config.labels))
        return lambda inputs: {"PROBABILITIES": sentiment.probabilities(inputs["INPUT_IDS"], inputs["ATTENTION_MASK"])}


def padded(items: Sequence[common_pb2.TokenizedText], limit: int) -> dict[str, Tensor]:
    """Typed items as INPUT_IDS and ATTENTION_MASK tensors, padded with 0 to the longest.

    Raises:
        InvalidInput: no items, or an item whose mask length differs from its ids'.
        Overloaded: more items than `limit`.
    """
    if len(items) > limit:
        raise Overloaded(f"{len(items)} items; the limit is {limit} per request")
    if not items:
        raise InvalidInput("no items in the request")
    width = max(len(item.input_ids) for item in items)
    ids = np.zeros((len(items), width), dtype=np.int64)
    mask = np.zeros((len(items), width), dtype=np.int64)
    for row, item in enumerate(items):
        count = len(item.input_ids)
        if item.attention_mask and len(item.attention_mask) != count:
            raise InvalidInput(f"items[{row}]: {len(item.attention_mask)} mask entries for {count} ids")
        ids[row, :count] = item.input_ids
        mask[row, :count] = item.attention_mask or 1
    return {"INPUT_IDS": Tensor("INPUT_IDS", "INT64", ids), "ATTENTION_MASK": Tensor("ATTENTION_MASK", "INT64", mask)}


class TransformerServicer(pb_grpc.TransformerServiceServicer):
    """`maas.transformer.v1.TransformerService` over the two v2 models (same batchers, same statistics)."""

    def __init__(self, embed: EmbedModel, sentiment: SentimentModel) -> None:
        self._embed = embed
        self._sentiment = sentiment

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        label_model(EMBED_MODEL)
        inputs = padded(request.items, self._embed.max_rows)
        version = self._embed.resolve(request.model_version)
        result = await self._embed.infer(InferRequest(inputs, version))
        embeddings = [common_pb2.Embedding(values=row) for row in result.outputs[0].array]
        return pb.EmbedResponse(embeddings=embeddings, model_version=version)

    async def ClassifyText(
        self, request: pb.ClassifyTextRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyTextResponse:
        label_model(SENTIMENT_MODEL)
        inputs = padded(request.items, self._sentiment.max_rows)
        version = self._sentiment.resolve(request.model_version)
        result = await self._sentiment.infer(InferRequest(inputs, version))
        labels = self._sentiment.configs[version].labels
        top_k = min(request.top_k or len(labels), len(labels))
        return pb.ClassifyTextResponse(
            results=top_labels(result.outputs[0].array, labels, top_k), model_version=version
        )


def build_service(settings: TransformerSettings) -> Service:
    """The transformer service: typed TransformerService, v2 `minilm_embed`, `minilm_sentiment` and `echo`."""
    encoders = EncoderCache()
    embed = EmbedModel(settings.model_repository, settings, encoders)
    sentiment = SentimentModel(settings.model_repository, settings, encoders)
    typed = TypedService(
        full_name=pb.DESCRIPTOR.services_by_name["TransformerService"].full_name,
        servicer=TransformerServicer(embed, sentiment),
        add_to_server=pb_grpc.add_TransformerServiceServicer_to_server,
    )
    return Service("transformer", ModelRegistry([EchoModel(), embed, sentiment]), [typed])
