"""The vision service over gRPC: typed ClassifyImage, v2 fashion_cnn, bad input; with the torch version, then
the ONNX version as the served default."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from maas.inference import model_config_pb2 as config_pb
from maas.vision.v1 import vision_pb2 as pb
from maas.vision.v1 import vision_pb2_grpc
from services.common.repository import read_model_file
from services.common.server import GrpcServer
from services.vision.data import LABELS, load_split
from tests.conftest import PLATFORMS, Served
from tests.contract.test_v2_echo import assert_status


@pytest.fixture(params=PLATFORMS)
def platform(request: pytest.FixtureRequest) -> str:
    """Each test here runs with the torch, then the ONNX version as the served default."""
    return request.param


@pytest.fixture(scope="module")
def test_images() -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_split("test")
    return images[:64], labels[:64]


@pytest.fixture
async def channel(vision_server: GrpcServer):
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{vision_server.port}", options=[("grpc.max_send_message_length", 64 << 20)]
    ) as chan:
        yield chan


@pytest.fixture
def v2(channel):
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture
def typed(channel):
    return vision_pb2_grpc.VisionServiceStub(channel)


def image_request(images: np.ndarray, datatype: str = "FP32", version: str = "") -> v2pb.ModelInferRequest:
    request = v2pb.ModelInferRequest(model_name="fashion_cnn", model_version=version)
    request.inputs.add(name="IMAGE", datatype=datatype, shape=images.shape)
    request.raw_input_contents.append(images.astype("<f4" if datatype == "FP32" else "<f8").tobytes())
    return request


def probabilities(response) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(response.outputs[0].shape))


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_v2_classifies_real_test_images(v2, test_images, served: Served):
    images, labels = test_images
    response = await v2.ModelInfer(image_request(images))
    probs = probabilities(response)
    assert probs.shape == (64, 10) and response.model_version == served.default("fashion_cnn")
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (probs.argmax(axis=1) == labels).mean() > 0.5, "even the tiny test CNN beats chance (0.1) by far"


async def test_model_config_describes_fashion_cnn_as_triton_would(v2, served: Served):
    config = (await v2.ModelConfig(v2pb.ModelConfigRequest(name="fashion_cnn"))).config
    assert (config.name, config.platform, config.max_batch_size) == ("fashion_cnn", served.platform_name, 32)
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("IMAGE", config_pb.TYPE_FP32, [1, 28, 28])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("PROBABILITIES", [10])]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    policy = read_model_file(served.repository, "fashion_cnn").policy
    assert config.version_policy.WhichOneof("policy_choice") == policy.kind
    assert config.version_policy.latest.num_versions == (policy.count if policy.kind == "latest" else 0)
    default = v2pb.ModelConfigRequest(name="fashion_cnn", version=served.default("fashion_cnn"))
    assert (await v2.ModelConfig(default)).config == config


async def test_typed_png_raw_and_v2_agree(v2, typed, test_images, served: Served):
    images, _ = test_images
    pixels = (images[:3, 0] * 255).round() / 255
    request = pb.ClassifyImageRequest(
        images=[
            pb.Image(encoded=png(pixels[0])),
            pb.Image(raw=pb.RawImage(pixels=pixels[1].ravel(), height=28, width=28)),
        ],
        top_k=3,
    )
    typed_response = await typed.ClassifyImage(request)
    v2_probs = probabilities(await v2.ModelInfer(image_request(pixels[:2, None])))
    assert typed_response.model_version == served.default("fashion_cnn")
    for result, probs in zip(typed_response.results, v2_probs, strict=True):
        assert [label.index for label in result.labels] == list(np.argsort(-probs)[:3])
        assert result.labels[0].name == LABELS[int(probs.argmax())]
        assert result.labels[0].probability == pytest.approx(float(probs.max()), rel=1e-5)


async def test_a_large_jpeg_is_resized(typed, test_images):
    images, _ = test_images
    big = Image.fromarray((images[0, 0] * 255).astype(np.uint8)).resize((280, 280))
    buffer = io.BytesIO()
    big.convert("RGB").save(buffer, format="JPEG")
    response = await typed.ClassifyImage(pb.ClassifyImageRequest(images=[pb.Image(encoded=buffer.getvalue())]))
    assert len(response.results[0].labels) == 1


BAD_V2 = {
    "wrong shape": (lambda imgs: image_request(imgs[:2, :, :27, :]), "INVALID_ARGUMENT", ["[-1, 1, 28, 28]"]),
    "wrong rank": (lambda imgs: image_request(imgs[:2, 0]), "INVALID_ARGUMENT", ["must have shape"]),
    "wrong dtype": (lambda imgs: image_request(imgs[:2], "FP64"), "INVALID_ARGUMENT", ["must be FP32, got FP64"]),
    "NaN": (lambda imgs: image_request(_with(imgs[:3], 1, np.nan)), "INVALID_ARGUMENT", ["IMAGE 1 holds NaN or Inf"]),
    "Inf": (lambda imgs: image_request(_with(imgs[:3], 2, np.inf)), "INVALID_ARGUMENT", ["IMAGE 2 holds NaN or Inf"]),
    "values over 1": (lambda imgs: image_request(imgs[:2] * 255), "INVALID_ARGUMENT", ["[0, 1]", "255"]),
    "negative values": (lambda imgs: image_request(imgs[:2] - 0.5), "INVALID_ARGUMENT", ["[0, 1]"]),
    "no images": (lambda imgs: image_request(imgs[:0]), "INVALID_ARGUMENT", ["no images"]),
    "over the image limit": (
        lambda imgs: image_request(np.zeros((257, 1, 28, 28), np.float32)),
        "RESOURCE_EXHAUSTED",
        ["257 images", "limit is 256"],
    ),
    "unknown version": (lambda imgs: image_request(imgs[:1], version="7"), "NOT_FOUND", ["no version '7'"]),
}


def _with(images: np.ndarray, index: int, value: float) -> np.ndarray:
    changed = images.copy()
    changed[index, 0, 5, 5] = value
    return changed


@pytest.mark.parametrize("case", list(BAD_V2))
async def test_bad_v2_input_gets_documented_status_and_server_keeps_serving(v2, test_images, case):
    build, code, fragments = BAD_V2[case]
    images, _ = test_images
    await assert_status(v2.ModelInfer(build(images)), grpc.StatusCode[code], *fragments)
    assert probabilities(await v2.ModelInfer(image_request(images[:1]))).shape == (1, 10)


async def test_ten_thousand_images_in_one_request_is_resource_exhausted(v2, typed):
    many = np.zeros((10_000, 1, 28, 28), np.float32)
    await assert_status(v2.ModelInfer(image_request(many)), grpc.StatusCode.RESOURCE_EXHAUSTED, "10000 images")
    typed_many = pb.ClassifyImageRequest(images=[pb.Image(raw=pb.RawImage(pixels=[0.0] * 784))] * 10_000)
    await assert_status(typed.ClassifyImage(typed_many), grpc.StatusCode.RESOURCE_EXHAUSTED, "10000 images")


BAD_TYPED = {
    "corrupt PNG": (pb.Image(encoded=b"\x89PNG\r\n\x1a\n" + b"\0garbage" * 20), ["images[0] is not a readable"]),
    "truncated PNG": (None, ["images[0] is not a readable"]),
    "not an image": (pb.Image(encoded=b"hello world"), ["images[0] is not a readable"]),
    "a GIF": (None, ["GIF; send PNG or JPEG"]),
    "raw of the wrong size": (pb.Image(raw=pb.RawImage(pixels=[0.5] * 100, height=10, width=10)), ["28x28"]),
    "raw out of range": (pb.Image(raw=pb.RawImage(pixels=[2.0] * 784)), ["[0, 1]"]),
    "empty image": (pb.Image(), ["neither encoded bytes nor a raw image"]),
}


def _truncated_png() -> pb.Image:
    noisy = png(np.random.default_rng(0).random((28, 28), dtype=np.float32))
    return pb.Image(encoded=noisy[: len(noisy) // 2])


def _gif() -> pb.Image:
    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, format="GIF")
    return pb.Image(encoded=buffer.getvalue())


@pytest.mark.parametrize("case", list(BAD_TYPED))
async def test_bad_typed_image_is_invalid_argument_and_server_keeps_serving(typed, case):
    image, fragments = BAD_TYPED[case]
    image = image or {"truncated PNG": _truncated_png, "a GIF": _gif}[case]()
    request = pb.ClassifyImageRequest(images=[image])
    await assert_status(typed.ClassifyImage(request), grpc.StatusCode.INVALID_ARGUMENT, *fragments)
    good = pb.ClassifyImageRequest(images=[pb.Image(raw=pb.RawImage(pixels=[0.0] * 784))])
    assert len((await typed.ClassifyImage(good)).results) == 1
