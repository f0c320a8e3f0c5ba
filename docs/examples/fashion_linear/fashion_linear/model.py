"""The model class: one class with maas's lifecycle (load, prepare, predict), in plain numpy.

Serve it with `maas serve fashion_linear.model:SoftmaxRegression --repository DIR`, from this directory
or with `--app-dir` pointing here, or with this package installed.
"""

from __future__ import annotations

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from services.common.errors import InvalidInput, Overloaded
from services.common.model import Arrays, Parameters, TensorSpec, Version
from services.common.repository import RepositoryError

PIXELS = 28 * 28
CLASSES = 10
WEIGHTS_FILE = "weights.safetensors"
MAX_IMAGES = 1024


class SoftmaxRegression:
    """v2 model `fashion-linear`: IMAGE FP32 [N, 784] in [0, 1] -> PROBABILITIES FP32 [N, 10]."""

    name = "fashion-linear"
    platform = "numpy_safetensors"
    inputs = (TensorSpec("IMAGE", "FP32", (-1, PIXELS)),)
    outputs = (TensorSpec("PROBABILITIES", "FP32", (-1, CLASSES)),)

    def __init__(self, weights: np.ndarray, bias: np.ndarray) -> None:
        self.weights = weights
        self.bias = bias

    @classmethod
    def load(cls, version: Version) -> SoftmaxRegression:
        """The weights of one version.

        Raises:
            RepositoryError: the weights file is unreadable or holds the wrong tensors.
        """
        path = version.directory / WEIGHTS_FILE
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise RepositoryError(f"{path}: not a readable safetensors file ({exc})") from None
        weights, bias = tensors.get("weights"), tensors.get("bias")
        if weights is None or bias is None or weights.shape != (PIXELS, CLASSES) or bias.shape != (CLASSES,):
            raise RepositoryError(f"{path}: expected weights [{PIXELS}, {CLASSES}] and bias [{CLASSES}]")
        return cls(weights.astype(np.float32), bias.astype(np.float32))

    def prepare(self, inputs: Arrays, parameters: Parameters) -> Arrays:
        """Refuse empty or oversized requests and pixels outside [0, 1].

        Raises:
            InvalidInput: no images, or a pixel is NaN or outside [0, 1].
            Overloaded: more than 1024 images.
        """
        images = inputs["IMAGE"]
        if images.shape[0] > MAX_IMAGES:
            raise Overloaded(f"IMAGE holds {images.shape[0]} images; the limit is {MAX_IMAGES} per request")
        if images.shape[0] == 0:
            raise InvalidInput("IMAGE holds no images")
        if not (images.min() >= 0.0 and images.max() <= 1.0):
            raise InvalidInput("IMAGE values must lie in [0, 1] (pixel / 255)")
        return inputs

    def predict(self, batch: Arrays) -> Arrays:
        """Class probabilities of a batch of images."""
        logits = batch["IMAGE"] @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exponentials = np.exp(logits)
        return {"PROBABILITIES": exponentials / exponentials.sum(axis=1, keepdims=True)}
