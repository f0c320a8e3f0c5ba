"""The Fashion-MNIST CNN: architecture, and the served model `fashion_cnn`. No gRPC, no Ray."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from services.common.errors import InvalidInput, Overloaded
from services.common.model import Arrays, Batching, Parameters, Version
from services.common.onnx_runtime import OnnxSession, is_onnx
from services.common.repository import RepositoryError
from services.common.torch_weights import CPU, load_weights
from services.vision.spec import INPUTS, MODEL_NAME, OUTPUTS, PLATFORM

ARCHITECTURE = "fashion_cnn_v2"
WEIGHTS_FILE = "model.safetensors"
DOWNSAMPLING = ("stride", "pool")


class FashionCNN(nn.Module):
    """Two conv-BN-ReLU blocks that each halve the image, and a small classifier: [N,1,28,28] in [0,1] -> 10 logits.

    A block halves the image with a stride-2 convolution (`downsample="stride"`, the default recipe) or
    with a 2x2 max pool after a stride-1 convolution (`"pool"`, the first published versions, and the
    default here so that a config recorded before the setting loads as it was trained). Striding
    computes a quarter of the convolution outputs and skips the pooling, the slowest operation at batch
    1 on a CPU whose caches went cold between requests, for 0.4 points of test accuracy (measured in
    docs/design.md). Width 16 keeps it small: about 0.5 M multiply-adds per image.
    `widths` sets the two blocks' channels apart (a pruned network: `maas train vision --prune`); by
    default they are `width` and twice that.
    """

    def __init__(
        self,
        width: int = 16,
        hidden: int = 128,
        dropout: float = 0.3,
        downsample: str = "pool",
        widths: list[int] | None = None,
    ) -> None:
        super().__init__()
        first, second = widths or (width, 2 * width)
        if downsample not in DOWNSAMPLING:
            raise ValueError(f"downsample must be one of {', '.join(DOWNSAMPLING)}, got {downsample!r}")
        pool = downsample == "pool"

        def block(inputs: int, outputs: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(inputs, outputs, 3, stride=1 if pool else 2, padding=1, bias=False),
                nn.BatchNorm2d(outputs),
                nn.ReLU(inplace=True),
                *([nn.MaxPool2d(2)] if pool else []),
            )

        self.features = nn.Sequential(block(1, first), block(first, second))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(second * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        return self.classifier(self.features(images))


def build(hyperparameters: dict) -> FashionCNN:
    """The architecture a version's config describes.

    Raises:
        RepositoryError: the hyperparameters do not describe a FashionCNN.
    """
    try:
        return FashionCNN(**hyperparameters)
    except (TypeError, ValueError) as exc:
        raise RepositoryError(f"fashion_cnn hyperparameters {hyperparameters}: {exc}") from None


class FoldedCNN:
    """A trained CNN as a flat list of tensor operations, for inference: images in, probabilities out.

    Each batch norm is folded into the convolution before it, any max pooling moved ahead of the ReLU
    (both commute, so results are identical on a quarter of the values), dropout gone, and no module
    dispatch per call. At batch 1 module dispatch costs about as much as the arithmetic. Convolutions
    run channels-last (NHWC), the layout oneDNN's kernels and max pooling are fastest in on a CPU
    (measured in docs/design.md).
    """

    def __init__(self, directory: Path, hyperparameters: dict, device: torch.device = CPU) -> None:
        """Load the version's weights into its architecture, fold them for inference and move them to `device`.

        Args:
            directory: the version's directory.
            hyperparameters: the architecture's, from the version's config.
            device: where the weights live and batches run.

        Raises:
            RepositoryError: the weights do not fit the architecture.
        """
        self.device = device
        network = load_weights(build(hyperparameters), directory / WEIGHTS_FILE)
        self._convolutions = []
        for block in network.features:
            weight, bias = _fold(block[0], block[1])
            pools = any(isinstance(layer, nn.MaxPool2d) for layer in block)
            weight = weight.to(device).contiguous(memory_format=torch.channels_last)
            self._convolutions.append((weight, bias.to(device), block[0].stride, pools))
        linears = [layer for layer in network.classifier if isinstance(layer, nn.Linear)]
        self._linears = [(layer.weight.detach().to(device), layer.bias.detach().to(device)) for layer in linears]

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Softmax probabilities, float32 [N, 10] on the CPU, for float32 images [N, 1, 28, 28] in [0, 1]."""
        hidden = torch.from_numpy(images).to(self.device).contiguous(memory_format=torch.channels_last)
        for weight, bias, stride, pool in self._convolutions:
            hidden = functional.conv2d(hidden, weight, bias, stride, padding=1)
            hidden = torch.relu_(functional.max_pool2d(hidden, 2) if pool else hidden)
        hidden = hidden.contiguous().flatten(1)
        (weight, bias), (out_weight, out_bias) = self._linears
        hidden = torch.relu_(functional.linear(hidden, weight, bias))
        return torch.softmax(functional.linear(hidden, out_weight, out_bias), dim=1).cpu().numpy()


class Classifier:
    """v2 model `fashion_cnn`: IMAGE FP32 [N, 1, 28, 28] in [0, 1] -> PROBABILITIES FP32 [N, 10].

    A torch version runs as a `FoldedCNN`; a version on ONNX Runtime (`platform: onnxruntime`) runs its
    exported graph, behind the same checks.
    """

    name = MODEL_NAME
    platform = PLATFORM
    inputs = INPUTS
    outputs = OUTPUTS
    batching = Batching(inline_when_idle=True)

    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        device: torch.device | str = CPU,
        max_images: int = 1024,
        value_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        """Args:
        forward: probabilities [N, 10] for images [N, 1, 28, 28] (a `FoldedCNN` or an `OnnxSession`).
        device: where `forward` computes.
        max_images: images per request; more is refused.
        value_range: the pixel values the version was trained on (inclusive).
        """
        self.forward = forward
        self.device = device
        self.max_images = max_images
        self.value_range = value_range
        low, high = value_range
        self._high_bits = int(np.float32(high).view(np.uint32)) if low == 0 and 0 < high < np.inf else None

    @classmethod
    def load(cls, version: Version) -> Classifier:
        """The CNN of a version, on the version's device: folded torch weights, or its ONNX graph.

        Raises:
            RepositoryError: the config names another architecture, or the files do not fit it.
        """
        config = version.config
        architecture = config.network(ARCHITECTURE, version.directory)
        forward: OnnxSession | FoldedCNN
        if is_onnx(config):
            forward = OnnxSession.of(version)
            forward.check(INPUTS, OUTPUTS, version.directory)
        else:
            forward = FoldedCNN(
                version.directory, architecture.get("hyperparameters", {}), torch.device(version.device)
            )
        value_range = config.inputs[0].range or (0.0, 1.0)
        return cls(forward, forward.device, version.settings.max_images, value_range)

    def prepare(self, inputs: Arrays, parameters: Parameters) -> Arrays:
        """Refuse empty or oversized batches, NaN/Inf, and pixels outside the declared range.

        Raises:
            InvalidInput: no images, NaN/Inf, or a pixel out of range.
            Overloaded: more images than the per-request limit.
        """
        images = inputs["IMAGE"]
        if images.shape[0] > self.max_images:
            raise Overloaded(
                f"IMAGE holds {images.shape[0]} images; the limit is {self.max_images} per request",
                field="inputs[IMAGE]",
            )
        if images.shape[0] == 0:
            raise InvalidInput("IMAGE holds no images", field="inputs[IMAGE]")
        # A float32 in [+0, high] has bits in [0, bits(high)] read as an unsigned integer; anything else
        # (negatives, -0.0, NaN, Inf, above high) is larger: one reduction instead of min and max.
        if (
            self._high_bits is not None
            and images.dtype == np.float32
            and images.view(np.uint32).max() <= self._high_bits
        ):
            return inputs
        low, high = self.value_range
        smallest, largest = images.min(), images.max()
        if smallest >= low and largest <= high:
            return inputs
        finite = np.isfinite(images).reshape(len(images), -1).all(axis=1)
        if not finite.all():
            raise InvalidInput(f"IMAGE {int(np.argmin(finite))} holds NaN or Inf", field="inputs[IMAGE]")
        raise InvalidInput(
            f"IMAGE values must lie in [{low:g}, {high:g}] (pixel / 255); got [{smallest:g}, {largest:g}]",
            field="inputs[IMAGE]",
        )

    def predict(self, batch: Arrays) -> Arrays:
        """PROBABILITIES of a batch of images."""
        return {"PROBABILITIES": self.probabilities(batch["IMAGE"])}

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax probabilities, float32 [N, 10], for float32 images [N, 1, 28, 28] in [0, 1]."""
        return self.forward(images)


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of one convolution equal to `conv` (no bias) followed by `norm` in eval mode."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return conv.weight * scale[:, None, None, None], norm.bias - norm.running_mean * scale


def multiply_adds(hyperparameters: dict) -> int:
    """Multiply-adds per image of the network `hyperparameters` describe (convolutions and linear layers)."""
    network = build(hyperparameters)
    total, side = 0, 28
    for block in network.features:
        conv = block[0]
        side = side // conv.stride[0]
        total += conv.out_channels * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] * side * side
        if any(isinstance(layer, nn.MaxPool2d) for layer in block):
            side //= 2
    return total + sum(
        layer.in_features * layer.out_features for layer in network.classifier if isinstance(layer, nn.Linear)
    )
