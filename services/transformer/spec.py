"""The transformer service, declared once (torch-free: the CLI, the gateway and the chart read it)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.model import TensorSpec
from services.common.sequences import MAX_TEXTS, SEQUENCE_INPUTS
from services.common.settings import QUEUE_DELAY, ModelServiceSettings
from services.common.spec import ModelSpec, Pipeline, ServiceSpec, TypedSpec

EMBED_MODEL = "minilm_embed"
SENTIMENT_MODEL = "minilm_sentiment"
PLATFORM = "pytorch_safetensors"
EMBEDDING_SIZE = 384
INPUTS = SEQUENCE_INPUTS
EMBED_OUTPUTS = (TensorSpec("EMBEDDING", "FP32", (-1, EMBEDDING_SIZE)),)
SENTIMENT_OUTPUTS = (TensorSpec("PROBABILITIES", "FP32", (-1, 2)),)


class TransformerSettings(ModelServiceSettings):
    """The transformer (MiniLM) service."""

    model_config = SettingsConfigDict(env_prefix="MAAS_TRANSFORMER_")
    port: int = Field(50055, ge=0, le=65535)
    max_texts: int = MAX_TEXTS
    max_queue_delay_ms: float = Field(
        10.0,
        ge=0,
        description=f"{QUEUE_DELAY} A MiniLM batch of 32 takes tens of milliseconds on a CPU thread, and its "
        "callers' next requests take a few to arrive, so waiting for them fills batches.",
    )


SPEC = ServiceSpec(
    name="transformer",
    settings=TransformerSettings,
    models=(
        ModelSpec(EMBED_MODEL, "services.transformer.model:Embedder", make="maas models export-minilm"),
        ModelSpec(SENTIMENT_MODEL, "services.transformer.model:SentimentClassifier", make="maas train transformer"),
    ),
    typed=TypedSpec(
        "maas.transformer.v1.transformer_pb2",
        "TransformerService",
        "services.transformer.servicer:TransformerServicer",
        {"Embed": EMBED_MODEL, "ClassifyText": SENTIMENT_MODEL},
    ),
    pipelines=(
        Pipeline("review_sentiment_minilm", SENTIMENT_MODEL, SENTIMENT_OUTPUTS[0]),
        Pipeline("text_embed", EMBED_MODEL, EMBED_OUTPUTS[0]),
    ),
    torch=True,
)
