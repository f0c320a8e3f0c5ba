"""What the text service serves, importable without torch."""

from __future__ import annotations

from services.common.models import TensorSpec
from services.common.sequences import SEQUENCE_INPUTS

MODEL_NAME = "review_lstm"
PLATFORM = "pytorch_safetensors"
INPUTS = SEQUENCE_INPUTS
OUTPUTS = (TensorSpec("PROBABILITIES", "FP32", (-1, 2)),)
