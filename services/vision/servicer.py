"""Vision servicers: the v2 model `fashion_cnn` and the typed `maas.vision.v1` API."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from maas.vision.v1 import vision_pb2 as pb
from maas.vision.v1 import vision_pb2_grpc as pb_grpc
from services.common import offload
from services.common.batched import BatchedModel
from services.common.batcher import Arrays, Predict
from services.common.codec import Tensor
from services.common.devices import select_device
from services.common.echo import EchoModel
from services.common.errors import InvalidInput, Overloaded
from services.common.interceptor import label_model, received_bytes
from services.common.models import InferRequest, ModelRegistry
from services.common.repository import RepositoryError, VersionConfig
from services.common.service import Service, TypedService
from services.common.settings import VisionSettings
from services.common.typed import top_labels
from services.vision.model import ARCHITECTURE, Classifier
from services.vision.spec import INPUTS, MODEL_NAME, OUTPUTS, PLATFORM, SIDE

ENCODINGS = ("PNG", "JPEG")


class FashionModel(BatchedModel):
    """v2 model `fashion_cnn`: IMAGE FP32 [N, 1, 28, 28] in [0, 1] -> PROBABILITIES FP32 [N, 10]."""

    name = MODEL_NAME
    platform = PLATFORM
    inputs = INPUTS
    outputs = OUTPUTS
    missing_hint = "; run `maas train vision`"

    def __init__(self, repository: Path, settings: VisionSettings, device: torch.device) -> None:
        super().__init__(repository, settings.batching(inline_when_idle=True))
        self.max_images = settings.max_images
        self.device = device

    def build(self, directory: Path, config: VersionConfig) -> Predict:
        """Load the CNN of a version."""
        if config.architecture.get("name") != ARCHITECTURE:
            raise RepositoryError(
                f"{directory}: architecture {config.architecture.get('name')!r} is not {ARCHITECTURE!r}"
            )
        classifier = Classifier(directory, config.architecture.get("hyperparameters", {}), self.device)
        self.record_device(directory.name, str(classifier.device))
        return lambda inputs: {"PROBABILITIES": classifier.probabilities(inputs["IMAGE"])}

    def prepare(self, inputs: Arrays, config: VersionConfig) -> Arrays:
        """Refuse empty or oversized batches, NaN/Inf, and pixels outside the declared range."""
        images = inputs["IMAGE"]
        if images.shape[0] > self.max_images:
            raise Overloaded(
                f"IMAGE holds {images.shape[0]} images; the limit is {self.max_images} per request",
                field="inputs[IMAGE]",
            )
        if images.shape[0] == 0:
            raise InvalidInput("IMAGE holds no images", field="inputs[IMAGE]")
        low, high = config.inputs[0].range or (0.0, 1.0)
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


def open_image(index: int, image: pb.Image, settings: VisionSettings) -> Image.Image | np.ndarray:
    """Read one typed-API image's header (an encoded image) or take its pixels (a raw one), checking
    its size before anything is decoded.

    Returns:
        The opened PIL image, still to decode (see `to_array`), or float32 [1, 28, 28] in [0, 1].

    Raises:
        InvalidInput: no image, a raw tensor that is not 28x28, or bytes that are not a readable PNG/JPEG.
        Overloaded: the encoded image is over the byte or pixel limit.
    """
    which = image.WhichOneof("source")
    if which == "raw":
        raw = image.raw
        if (raw.height or SIDE, raw.width or SIDE) != (SIDE, SIDE) or len(raw.pixels) != SIDE * SIDE:
            raise InvalidInput(
                f"images[{index}]: a raw image must be 28x28 (784 pixels); got {raw.height}x{raw.width} "
                f"with {len(raw.pixels)} pixels",
                field=f"images[{index}].raw",
            )
        return np.asarray(raw.pixels, dtype=np.float32).reshape(1, SIDE, SIDE)
    if which != "encoded":
        raise InvalidInput(f"images[{index}] has neither encoded bytes nor a raw image", field=f"images[{index}]")
    if len(image.encoded) > settings.max_image_bytes:
        raise Overloaded(
            f"images[{index}] is {len(image.encoded)} bytes; the limit is {settings.max_image_bytes}",
            field=f"images[{index}]",
        )
    try:
        opened = Image.open(io.BytesIO(image.encoded))
    except Image.DecompressionBombError as exc:
        raise Overloaded(
            f"images[{index}] has more pixels than the limit of {settings.max_image_pixels} per image ({exc})",
            field=f"images[{index}]",
        ) from None
    except UnidentifiedImageError:
        raise InvalidInput(
            f"images[{index}] is not a readable PNG or JPEG: its {len(image.encoded)} bytes are in no image format "
            "this service reads; send the bytes of a PNG or JPEG file, or raw 28x28 pixels",
            field=f"images[{index}]",
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(
            f"images[{index}] is not a readable PNG or JPEG: the image is damaged or truncated ({exc}); send a whole "
            "PNG or JPEG file",
            field=f"images[{index}]",
        ) from None
    if opened.format not in ENCODINGS:
        raise InvalidInput(f"images[{index}] is {opened.format}; send PNG or JPEG", field=f"images[{index}]")
    if opened.width * opened.height > settings.max_image_pixels:
        raise Overloaded(
            f"images[{index}] is {opened.width}x{opened.height} pixels; the limit is {settings.max_image_pixels} "
            "per image",
            field=f"images[{index}]",
        )
    return opened


def to_array(index: int, opened: Image.Image | np.ndarray) -> np.ndarray:
    """Decode an opened image as float32 [1, 28, 28] in [0, 1] (see `open_image`).

    Encoded images are converted to grayscale and resized to 28x28 if needed; Fashion-MNIST images
    are light garments on a black background.

    Raises:
        InvalidInput: the image data is truncated or corrupt.
    """
    if isinstance(opened, np.ndarray):
        return opened
    try:
        with opened:
            gray = opened.convert("L")
            if gray.size != (SIDE, SIDE):
                gray = gray.resize((SIDE, SIDE), Image.Resampling.LANCZOS)
            return (np.asarray(gray, dtype=np.float32) / 255.0).reshape(1, SIDE, SIDE)
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(
            f"images[{index}] is not a readable PNG or JPEG: the image is damaged or truncated ({exc}); send a whole "
            "PNG or JPEG file",
            field=f"images[{index}]",
        ) from None


def _pixels(opened: Image.Image | np.ndarray) -> int:
    return opened.size if isinstance(opened, np.ndarray) else opened.width * opened.height


class VisionServicer(pb_grpc.VisionServiceServicer):
    """`maas.vision.v1.VisionService` over `FashionModel` (same batcher, same statistics)."""

    def __init__(self, model: FashionModel, settings: VisionSettings) -> None:
        self._model = model
        self._settings = settings

    async def ClassifyImage(
        self, request: pb.ClassifyImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyImageResponse:
        label_model(MODEL_NAME)
        if len(request.images) > self._model.max_images:
            raise Overloaded(
                f"{len(request.images)} images; the limit is {self._model.max_images} per request", field="images"
            )
        if not request.images:
            raise InvalidInput("no images in the request", field="images")
        version = self._model.resolve(request.model_version)
        self._model.admit(version)
        images = await self._decode(request)
        result = await self._model.infer(InferRequest({"IMAGE": Tensor("IMAGE", "FP32", images)}, version))
        labels = self._model.configs[version].labels
        top_k = min(request.top_k or 1, len(labels))
        return pb.ClassifyImageResponse(
            results=top_labels(result.outputs[0].array, labels, top_k), model_version=version
        )

    async def _decode(self, request: pb.ClassifyImageRequest) -> np.ndarray:
        """Every image as float32 [N, 1, 28, 28]: headers read and sizes checked first (off the event loop
        when the request is large), then decoded, in chunks on worker threads when they hold many pixels.

        Raises:
            InvalidInput / Overloaded: as `open_image` and `to_array`, or more pixels in all than the
                request limit.
        """
        settings = self._settings
        opened = await offload.run(
            lambda: [open_image(i, image, settings) for i, image in enumerate(request.images)],
            received_bytes(request),
            settings.inline_max_bytes,
        )
        pixels = [_pixels(image) for image in opened]
        if sum(pixels) > settings.max_request_pixels:
            raise Overloaded(
                f"the images hold {sum(pixels)} pixels in all; the limit is {settings.max_request_pixels} per request",
                field="images",
            )
        parts = await offload.map_chunks(
            lambda part: [to_array(i, opened[i]) for i in range(len(opened))[part]], pixels, settings.inline_max_bytes
        )
        return np.stack([array for part in parts for array in part])


def build_service(settings: VisionSettings) -> Service:
    """The vision service: typed VisionService, v2 `fashion_cnn` and `echo`.

    Raises:
        DeviceError: the `device` setting asks for a device this process does not see.
    """
    model = FashionModel(settings.model_repository, settings, select_device(settings.device))
    typed = TypedService(
        full_name=pb.DESCRIPTOR.services_by_name["VisionService"].full_name,
        servicer=VisionServicer(model, settings),
        add_to_server=pb_grpc.add_VisionServiceServicer_to_server,
    )
    return Service("vision", ModelRegistry([EchoModel(), model]), [typed])
