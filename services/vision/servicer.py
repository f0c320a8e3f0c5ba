"""The typed `maas.vision.v1` API over the v2 model `fashion_cnn`."""

from __future__ import annotations

import io

import grpc
import numpy as np
from PIL import Image, UnidentifiedImageError

from maas.vision.v1 import vision_pb2 as pb
from maas.vision.v1 import vision_pb2_grpc as pb_grpc
from services.common.codec import Tensor
from services.common.errors import InvalidInput, Overloaded
from services.common.interceptor import label_model
from services.common.typed import top_labels
from services.common.versions import ModelRegistry
from services.vision.spec import MODEL_NAME, SIDE, VisionSettings

MAX_DECODED_PIXELS = 4096 * 4096
ENCODINGS = ("PNG", "JPEG")


def decode_image(index: int, image: pb.Image, max_bytes: int) -> np.ndarray:
    """One typed-API image as float32 [1, 28, 28] in [0, 1].

    Encoded images (PNG or JPEG) are converted to grayscale and resized to 28x28 if needed;
    Fashion-MNIST images are light garments on a black background.

    Raises:
        InvalidInput: no image, a raw tensor that is not 28x28, or bytes that are not a readable PNG/JPEG.
        Overloaded: the encoded image is over the byte limit.
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
    if len(image.encoded) > max_bytes:
        raise Overloaded(
            f"images[{index}] is {len(image.encoded)} bytes; the limit is {max_bytes}", field=f"images[{index}]"
        )
    try:
        with Image.open(io.BytesIO(image.encoded)) as decoded:
            if decoded.format not in ENCODINGS:
                raise InvalidInput(f"images[{index}] is {decoded.format}; send PNG or JPEG", field=f"images[{index}]")
            if decoded.width * decoded.height > MAX_DECODED_PIXELS:
                raise InvalidInput(
                    f"images[{index}] is {decoded.width}x{decoded.height}, over 4096x4096", field=f"images[{index}]"
                )
            gray = decoded.convert("L")
            if gray.size != (SIDE, SIDE):
                gray = gray.resize((SIDE, SIDE), Image.Resampling.LANCZOS)
            return (np.asarray(gray, dtype=np.float32) / 255.0).reshape(1, SIDE, SIDE)
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


class VisionServicer(pb_grpc.VisionServiceServicer):
    """`maas.vision.v1.VisionService` over `fashion_cnn` (same batcher, same statistics)."""

    def __init__(self, models: ModelRegistry, settings: VisionSettings) -> None:
        self._model = models.get(MODEL_NAME)
        self._max_images = settings.max_images
        self._max_image_bytes = settings.max_image_bytes

    async def ClassifyImage(
        self, request: pb.ClassifyImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyImageResponse:
        label_model(MODEL_NAME)
        if len(request.images) > self._max_images:
            raise Overloaded(
                f"{len(request.images)} images; the limit is {self._max_images} per request", field="images"
            )
        if not request.images:
            raise InvalidInput("no images in the request", field="images")
        loaded = self._model.get(request.model_version)
        images = np.stack([decode_image(i, image, self._max_image_bytes) for i, image in enumerate(request.images)])
        result = await loaded.infer({"IMAGE": Tensor("IMAGE", "FP32", images)}, {})
        labels = loaded.config.labels
        top_k = min(request.top_k or 1, len(labels))
        return pb.ClassifyImageResponse(
            results=top_labels(result.outputs[0].array, labels, top_k), model_version=loaded.version
        )
