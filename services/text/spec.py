"""The text service, declared once (torch-free: the CLI, the gateway and the chart read it)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.model import TensorSpec
from services.common.sequences import MAX_TEXTS, SEQUENCE_INPUTS
from services.common.settings import ModelServiceSettings
from services.common.spec import ModelSpec, Pipeline, ServiceSpec, TypedSpec

MODEL_NAME = "review_lstm"
PLATFORM = "pytorch_safetensors"
INPUTS = SEQUENCE_INPUTS
OUTPUTS = (TensorSpec("PROBABILITIES", "FP32", (-1, 2)),)


class TextSettings(ModelServiceSettings):
    """The text (LSTM) service."""

    model_config = SettingsConfigDict(env_prefix="MAAS_TEXT_")
    port: int = Field(50054, ge=0, le=65535)
    max_texts: int = MAX_TEXTS


SPEC = ServiceSpec(
    name="text",
    settings=TextSettings,
    models=(ModelSpec(MODEL_NAME, "services.text.model:Classifier", make="maas train text"),),
    typed=TypedSpec(
        "maas.text.v1.text_pb2", "TextService", "services.text.servicer:TextServicer", {"ClassifyText": MODEL_NAME}
    ),
    pipelines=(Pipeline("review_sentiment_lstm", MODEL_NAME, OUTPUTS[0]),),
    torch=True,
)
