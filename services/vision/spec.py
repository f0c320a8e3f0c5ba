"""The vision service, declared once (torch-free: the CLI, the gateway and the chart read it)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.model import TensorSpec
from services.common.settings import ModelServiceSettings
from services.common.spec import ModelSpec, ServiceSpec, TypedSpec

MODEL_NAME = "fashion_cnn"
PLATFORM = "pytorch_safetensors"
SIDE = 28
INPUTS = (TensorSpec("IMAGE", "FP32", (-1, 1, SIDE, SIDE)),)
OUTPUTS = (TensorSpec("PROBABILITIES", "FP32", (-1, 10)),)


class VisionSettings(ModelServiceSettings):
    """The vision (CNN) service."""

    model_config = SettingsConfigDict(env_prefix="MAAS_VISION_")
    port: int = Field(50053, ge=0, le=65535)
    max_images: int = Field(1024, ge=1, description="Images per request; more is RESOURCE_EXHAUSTED.")
    max_image_bytes: int = Field(4 << 20, ge=1, description="Bytes per encoded image; more is RESOURCE_EXHAUSTED.")
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="Pixels per encoded image, as its header declares; more is RESOURCE_EXHAUSTED."
    )
    max_request_pixels: int = Field(
        1 << 25, ge=1, description="Pixels of all encoded images per request; more is RESOURCE_EXHAUSTED."
    )


SPEC = ServiceSpec(
    name="vision",
    settings=VisionSettings,
    models=(ModelSpec(MODEL_NAME, "services.vision.model:Classifier", make="maas train vision"),),
    typed=TypedSpec(
        "maas.vision.v1.vision_pb2",
        "VisionService",
        "services.vision.servicer:VisionServicer",
        {"ClassifyImage": MODEL_NAME},
    ),
    torch=True,
)
