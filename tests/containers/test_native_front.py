"""The native front from the models image (docs/native-front.md): the chart's `front: native` setting, with
a latency target, serves fashion_cnn from the extension the Containerfile builds, and answers right."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from maas.inference import grpc_service_pb2 as pb
from services.common.codec import Tensor, encode_inputs
from services.vision.data import load_split
from tests.containers.podman import Container, chart_services, containers, deliver, free_port_pair, start, wait_serving

pytestmark = pytest.mark.containers

INFER = "/inference.GRPCInferenceService/ModelInfer"
IMAGES = 32


def test_the_charts_native_front_setting_serves_fashion_cnn_from_the_models_image(images: dict, tmp_path: Path):
    vision = chart_services("vision.settings.front=native", "vision.settings.max_latency_ms=50")["vision"]
    assert (vision.env["MAAS_VISION_FRONT"], vision.env["MAAS_VISION_MAX_LATENCY_MS"]) == ("native", "50")
    deliver(vision, tmp_path / "models")
    port = free_port_pair()
    pictures, labels = load_split("test")
    with containers() as started:
        container = Container(start(vision, port, tmp_path / "models", None), "vision", f"127.0.0.1:{port}")
        started.append(container)
        wait_serving(container.address, 180, container.running)
        assert "vision: native front answers fashion_cnn" in container.logs()
        with grpc.insecure_channel(container.address) as channel:
            infer = channel.unary_unary(INFER, pb.ModelInferRequest.SerializeToString, pb.ModelInferResponse.FromString)
            right = 0
            for picture, label in zip(pictures[:IMAGES], labels[:IMAGES], strict=True):
                request = pb.ModelInferRequest(model_name="fashion_cnn")
                encode_inputs(request, [Tensor("IMAGE", "FP32", np.ascontiguousarray(picture[None]))])
                response = infer(request, timeout=30)
                logits = np.frombuffer(response.raw_output_contents[0], np.float32)
                right += int(logits.argmax() == label)
    assert right >= 0.8 * IMAGES, f"{right} of {IMAGES} test images classified right"
