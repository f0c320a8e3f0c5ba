"""What the transformer service serves, importable without torch."""

from __future__ import annotations

from services.common.models import TensorSpec

EMBED_MODEL = "minilm_embed"
SENTIMENT_MODEL = "minilm_sentiment"
PLATFORM = "pytorch_safetensors"
EMBEDDING_SIZE = 384
MAX_SEQUENCE = 512
SEQUENCE_INPUTS = (TensorSpec("INPUT_IDS", "INT64", (-1, -1)), TensorSpec("ATTENTION_MASK", "INT64", (-1, -1)))
EMBED_OUTPUTS = (TensorSpec("EMBEDDING", "FP32", (-1, EMBEDDING_SIZE)),)
SENTIMENT_OUTPUTS = (TensorSpec("PROBABILITIES", "FP32", (-1, 2)),)
PAD = {"INPUT_IDS": 0, "ATTENTION_MASK": 0}
