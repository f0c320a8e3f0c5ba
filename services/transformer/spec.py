"""What the transformer service serves, importable without torch."""

from __future__ import annotations

from services.common.models import TensorSpec

EMBED_MODEL = "minilm_embed"
SENTIMENT_MODEL = "minilm_sentiment"
PLATFORM = "pytorch_safetensors"
EMBEDDING_SIZE = 384
EMBED_OUTPUTS = (TensorSpec("EMBEDDING", "FP32", (-1, EMBEDDING_SIZE)),)
SENTIMENT_OUTPUTS = (TensorSpec("PROBABILITIES", "FP32", (-1, 2)),)
