"""The typed `maas.vision.v1` API over the v2 model `fashion_cnn`.

Image headers are read and sizes checked before anything is decoded; a large request is decoded on worker
threads, in chunks (see `services.common.offload`).
"""

from __future__ import annotations

import io

import grpc
import numpy as np
from PIL import Image, UnidentifiedImageError

from maas.vision.v1 import vision_pb2 as pb
from maas.vision.v1 import vision_pb2_grpc as pb_grpc
from services.common import offload
from services.common.codec import Tensor
from services.common.errors import InvalidInput, Overloaded
from services.common.interceptor import label_model, received_bytes
from services.common.typed import top_labels
from services.common.versions import ModelRegistry
from services.vision.spec import MODEL_NAME, SIDE, VisionSettings

ENCODINGS = ("PNG", "JPEG")


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
        raise _damaged(index, exc) from None
    if opened.format not in ENCODINGS:
        raise InvalidInput(f"images[{index}] is {opened.format}; send PNG or JPEG", field=f"images[{index}]")
    if opened.width * opened.height > settings.max_image_pixels:
        raise Overloaded(
            f"images[{index}] is {opened.width}x{opened.height} pixels; the limit is {settings.max_image_pixels} "
            "per image",
            field=f"images[{index}]",
        )
    return opened


def _damaged(index: int, exc: Exception) -> InvalidInput:
    return InvalidInput(
        f"images[{index}] is not a readable PNG or JPEG: the image is damaged or truncated ({exc}); send a whole "
        "PNG or JPEG file",
        field=f"images[{index}]",
    )


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
        raise _damaged(index, exc) from None


def _pixels(opened: Image.Image | np.ndarray) -> int:
    return opened.size if isinstance(opened, np.ndarray) else opened.width * opened.height


class VisionServicer(pb_grpc.VisionServiceServicer):
    """`maas.vision.v1.VisionService` over `fashion_cnn` (same batcher, same statistics)."""

    def __init__(self, models: ModelRegistry, settings: VisionSettings) -> None:
        self._model = models.get(MODEL_NAME)
        self._settings = settings

    async def ClassifyImage(
        self, request: pb.ClassifyImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyImageResponse:
        label_model(MODEL_NAME)
        if len(request.images) > self._settings.max_images:
            raise Overloaded(
                f"{len(request.images)} images; the limit is {self._settings.max_images} per request", field="images"
            )
        if not request.images:
            raise InvalidInput("no images in the request", field="images")
        loaded = self._model.get(request.model_version)
        if loaded.admit is not None:
            loaded.admit()
        images = await self._decode(request)
        result = await loaded.infer({"IMAGE": Tensor("IMAGE", "FP32", images)}, {})
        labels = loaded.config.labels
        top_k = min(request.top_k or 1, len(labels))
        return pb.ClassifyImageResponse(
            results=top_labels(result.outputs[0].array, labels, top_k), model_version=loaded.version
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
