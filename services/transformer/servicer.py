"""Transformer servicers: v2 `minilm_embed` and `minilm_sentiment`, and the typed `maas.transformer.v1` API."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import torch

from maas.common.v1 import common_pb2
from maas.transformer.v1 import transformer_pb2 as pb
from maas.transformer.v1 import transformer_pb2_grpc as pb_grpc
from services.common.batcher import Predict
from services.common.devices import select_device
from services.common.echo import EchoModel
from services.common.interceptor import label_model
from services.common.models import InferRequest, ModelRegistry
from services.common.repository import RepositoryError, VersionConfig, read_version
from services.common.sequences import SequenceModel, padded
from services.common.service import Service, TypedService
from services.common.settings import TransformerSettings
from services.transformer.model import ENCODER_ARCHITECTURE, HEAD_ARCHITECTURE, Encoder, Sentiment
from services.transformer.spec import EMBED_MODEL, EMBED_OUTPUTS, PLATFORM, SENTIMENT_MODEL, SENTIMENT_OUTPUTS


class EncoderCache:
    """Encoders loaded once per version directory and quantization, on one device, shared by the
    embedding and sentiment models."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._encoders: dict[tuple[Path, str | None], Encoder] = {}
        self._lock = threading.Lock()

    def get(self, directory: Path, bert_config: dict, quantization: str | None) -> Encoder:
        """The encoder of a `minilm_embed` version directory, loading it on first use.

        Raises:
            RepositoryError: the weights do not fit the BERT config, or the quantization is unknown.
        """
        key = (directory.resolve(), quantization)
        with self._lock:
            if key not in self._encoders:
                self._encoders[key] = Encoder(directory, bert_config, quantization, self.device)
            return self._encoders[key]


class _SequenceModel(SequenceModel):
    """A MiniLM model: its versions share the encoders loaded once per `minilm_embed` version."""

    platform = PLATFORM

    def __init__(self, repository: Path, settings: TransformerSettings, encoders: EncoderCache) -> None:
        super().__init__(repository, settings)
        self._encoders = encoders

    def _encoder(self, directory: Path, version: str, quantization: str | None) -> Encoder:
        """The encoder of a `minilm_embed` version, quantized if either its config or `quantization` says so."""
        config = read_version(directory, EMBED_MODEL)
        if config.architecture.get("name") != ENCODER_ARCHITECTURE:
            raise RepositoryError(f"{directory}: architecture is not {ENCODER_ARCHITECTURE!r}")
        encoder = self._encoders.get(directory, config.architecture["bert"], quantization or config.quantization)
        self.vocab_sizes[version] = encoder.vocab_size
        return encoder


class EmbedModel(_SequenceModel):
    """v2 model `minilm_embed`: INPUT_IDS, ATTENTION_MASK INT64 [N, L] -> EMBEDDING FP32 [N, 384]."""

    name = EMBED_MODEL
    outputs = EMBED_OUTPUTS
    missing_hint = "; run `maas models export-minilm`"

    def build(self, directory: Path, config: VersionConfig) -> Predict:
        """The version's encoder as a predict function, quantized as its config says."""
        encoder = self._encoder(directory, directory.name, config.quantization)
        self.record_device(directory.name, str(encoder.device))
        return lambda inputs: {"EMBEDDING": encoder.embed(inputs["INPUT_IDS"], inputs["ATTENTION_MASK"])}


class SentimentModel(_SequenceModel):
    """v2 model `minilm_sentiment`: INPUT_IDS, ATTENTION_MASK INT64 [N, L] -> PROBABILITIES FP32 [N, 2]."""

    name = SENTIMENT_MODEL
    outputs = SENTIMENT_OUTPUTS
    missing_hint = "; run `maas train transformer`"

    def build(self, directory: Path, config: VersionConfig) -> Predict:
        """The encoder the head was trained on, and the head, both quantized as its config says."""
        if config.architecture.get("name") != HEAD_ARCHITECTURE:
            raise RepositoryError(f"{directory}: architecture is not {HEAD_ARCHITECTURE!r}")
        encoder = self._encoder(self.repository / config.architecture["encoder"], directory.name, config.quantization)
        sentiment = Sentiment(encoder, directory, len(config.labels), config.quantization)
        self.record_device(directory.name, str(sentiment.device))
        return lambda inputs: {"PROBABILITIES": sentiment.probabilities(inputs["INPUT_IDS"], inputs["ATTENTION_MASK"])}


class TransformerServicer(pb_grpc.TransformerServiceServicer):
    """`maas.transformer.v1.TransformerService` over the two v2 models (same batchers, same statistics)."""

    def __init__(self, embed: EmbedModel, sentiment: SentimentModel) -> None:
        self._embed = embed
        self._sentiment = sentiment

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        label_model(EMBED_MODEL)
        version = self._embed.resolve(request.model_version)
        self._embed.admit(version)
        inputs = padded(request.items, self._embed.max_rows)
        result = await self._embed.infer(InferRequest(inputs, version))
        embeddings = [common_pb2.Embedding(values=row) for row in result.outputs[0].array]
        return pb.EmbedResponse(embeddings=embeddings, model_version=version)

    async def ClassifyText(
        self, request: pb.ClassifyTextRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyTextResponse:
        label_model(SENTIMENT_MODEL)
        results, version = await self._sentiment.classify(request.items, request.top_k, request.model_version)
        return pb.ClassifyTextResponse(results=results, model_version=version)


def build_service(settings: TransformerSettings) -> Service:
    """The transformer service: typed TransformerService, v2 `minilm_embed`, `minilm_sentiment` and `echo`.

    Raises:
        DeviceError: the `device` setting asks for a device this process does not see.
    """
    encoders = EncoderCache(select_device(settings.device))
    embed = EmbedModel(settings.model_repository, settings, encoders)
    sentiment = SentimentModel(settings.model_repository, settings, encoders)
    typed = TypedService(
        full_name=pb.DESCRIPTOR.services_by_name["TransformerService"].full_name,
        servicer=TransformerServicer(embed, sentiment),
        add_to_server=pb_grpc.add_TransformerServiceServicer_to_server,
    )
    return Service("transformer", ModelRegistry([EchoModel(), embed, sentiment]), [typed])
