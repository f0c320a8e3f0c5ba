"""Text servicers: the v2 model `review_lstm` and the typed `maas.text.v1` API."""

from __future__ import annotations

from pathlib import Path

import grpc
import torch

from maas.text.v1 import text_pb2 as pb
from maas.text.v1 import text_pb2_grpc as pb_grpc
from services.common.batcher import Predict
from services.common.devices import select_device
from services.common.echo import EchoModel
from services.common.interceptor import label_model
from services.common.models import ModelRegistry
from services.common.repository import RepositoryError, VersionConfig
from services.common.sequences import SequenceModel
from services.common.service import Service, TypedService
from services.common.settings import TextSettings
from services.text.model import ARCHITECTURE, Classifier
from services.text.spec import MODEL_NAME, OUTPUTS, PLATFORM


class ReviewModel(SequenceModel):
    """v2 model `review_lstm`: INPUT_IDS, ATTENTION_MASK INT64 [N, L] -> PROBABILITIES FP32 [N, 2]."""

    name = MODEL_NAME
    platform = PLATFORM
    outputs = OUTPUTS
    missing_hint = "; run `maas train text`"

    def __init__(self, repository: Path, settings: TextSettings, device: torch.device) -> None:
        super().__init__(repository, settings)
        self.device = device

    def build(self, directory: Path, config: VersionConfig) -> Predict:
        """Load the LSTM of a version, quantized as its config says."""
        if config.architecture.get("name") != ARCHITECTURE:
            raise RepositoryError(
                f"{directory}: architecture {config.architecture.get('name')!r} is not {ARCHITECTURE!r}"
            )
        try:
            classifier = Classifier(
                directory, config.architecture.get("hyperparameters", {}), config.quantization, self.device
            )
        except (KeyError, TypeError) as exc:
            raise RepositoryError(
                f"{directory}: architecture hyperparameters do not build the LSTM ({exc!r})"
            ) from None
        self.record_device(directory.name, str(classifier.device))
        self.vocab_sizes[directory.name] = classifier.vocab_size
        return lambda inputs: {"PROBABILITIES": classifier.probabilities(inputs["INPUT_IDS"], inputs["ATTENTION_MASK"])}


class TextServicer(pb_grpc.TextServiceServicer):
    """`maas.text.v1.TextService` over `ReviewModel` (same batcher, same statistics)."""

    def __init__(self, model: ReviewModel) -> None:
        self._model = model

    async def ClassifyText(
        self, request: pb.ClassifyTextRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyTextResponse:
        label_model(MODEL_NAME)
        results, version = await self._model.classify(request.items, request.top_k, request.model_version)
        return pb.ClassifyTextResponse(results=results, model_version=version)


def build_service(settings: TextSettings) -> Service:
    """The text service: typed TextService, v2 `review_lstm` and `echo`.

    Raises:
        DeviceError: the `device` setting asks for a device this process does not see.
    """
    model = ReviewModel(settings.model_repository, settings, select_device(settings.device))
    typed = TypedService(
        full_name=pb.DESCRIPTOR.services_by_name["TextService"].full_name,
        servicer=TextServicer(model),
        add_to_server=pb_grpc.add_TextServiceServicer_to_server,
    )
    return Service("text", ModelRegistry([EchoModel(), model]), [typed])
