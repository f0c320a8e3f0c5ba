"""What the vision service serves, importable without torch (the CLI and tests read it)."""

from __future__ import annotations

from services.common.models import TensorSpec

MODEL_NAME = "fashion_cnn"
PLATFORM = "pytorch_safetensors"
SIDE = 28
INPUTS = (TensorSpec("IMAGE", "FP32", (-1, 1, SIDE, SIDE)),)
OUTPUTS = (TensorSpec("PROBABILITIES", "FP32", (-1, 10)),)
