"""The Fashion-MNIST CNN: architecture and inference. No gRPC, no Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from services.common.torch_weights import CPU, load_weights

ARCHITECTURE = "fashion_cnn_v2"
WEIGHTS_FILE = "model.safetensors"


class FashionCNN(nn.Module):
    """Two conv-BN-ReLU-max-pool blocks and a small classifier: [N,1,28,28] in [0,1] -> 10 logits.

    Kept small on purpose (width 16: about 1.2 M multiply-adds per image), so one image takes about
    0.2 ms on one CPU thread.
    """

    def __init__(self, width: int = 16, hidden: int = 128, dropout: float = 0.3) -> None:
        super().__init__()

        def block(inputs: int, outputs: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
                nn.BatchNorm2d(outputs),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(1, width), block(width, 2 * width))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * width * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        return self.classifier(self.features(images))


def build(hyperparameters: dict) -> FashionCNN:
    """The architecture a version's config describes."""
    return FashionCNN(**hyperparameters)


class Classifier:
    """A loaded version: images in, class probabilities out.

    At load, the trained network becomes a flat list of tensor operations: each batch norm folded
    into the convolution before it, max pooling moved ahead of the ReLU (both commute, so results are
    identical on a quarter of the values), dropout gone, and no module dispatch per call. At batch 1
    module dispatch costs about as much as the arithmetic.
    """

    def __init__(self, directory: Path, hyperparameters: dict, device: torch.device = CPU) -> None:
        """Load the version's weights into its architecture, fold them for inference and move them
        to `device`.

        Args:
            directory: the version's directory.
            hyperparameters: the architecture's, from the version's config.
            device: where the weights live and batches run.

        Raises:
            RepositoryError: the weights do not fit the architecture.
        """
        self.device = device
        network = load_weights(build(hyperparameters), directory / WEIGHTS_FILE)
        self._convolutions = [
            (weight.to(device), bias.to(device)) for weight, bias in (_fold(b[0], b[1]) for b in network.features)
        ]
        linears = [layer for layer in network.classifier if isinstance(layer, nn.Linear)]
        self._linears = [(layer.weight.detach().to(device), layer.bias.detach().to(device)) for layer in linears]

    @torch.inference_mode()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax probabilities, float32 [N, 10] on the CPU, for float32 images [N, 1, 28, 28] in [0, 1]."""
        hidden = torch.from_numpy(images).to(self.device)
        for weight, bias in self._convolutions:
            hidden = torch.relu_(functional.max_pool2d(functional.conv2d(hidden, weight, bias, padding=1), 2))
        hidden = hidden.flatten(1)
        (weight, bias), (out_weight, out_bias) = self._linears
        hidden = torch.relu_(functional.linear(hidden, weight, bias))
        return torch.softmax(functional.linear(hidden, out_weight, out_bias), dim=1).cpu().numpy()


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of one convolution equal to `conv` (no bias) followed by `norm` in eval mode."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return conv.weight * scale[:, None, None, None], norm.bias - norm.running_mean * scale
