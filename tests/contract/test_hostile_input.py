"""Hostile input against real servers on real sockets: every malformed or oversized request gets a clear
status (never INTERNAL), allocates nothing its data does not back, and leaves the server serving."""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from maas.common.v1 import common_pb2
from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from maas.text.v1 import text_pb2, text_pb2_grpc
from maas.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from maas.transformer.v1 import transformer_pb2, transformer_pb2_grpc
from maas.vision.v1 import vision_pb2, vision_pb2_grpc
from services.common.batched import serve_model
from services.common.echo import echo_model
from services.common.model import Arrays
from services.common.server import GrpcServer
from services.common.settings import EchoSettings, ModelServiceSettings
from services.common.versions import ModelRegistry
from services.gateway.hosting import build_server
from tests.conftest import started
from tests.contract.linear_model import LinearModel, make_version
from tests.contract.test_gateway import gateway_settings, routing
from tests.contract.test_v2_echo import assert_status, assert_still_serving


@pytest.fixture
def hosting() -> str:
    """The grpc hosting only: the memory checks measure a server running in this process."""
    return "grpc"


LARGE = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


@pytest.fixture
async def gateway(tokenizer_server: GrpcServer) -> AsyncIterator[GrpcServer]:
    """The gateway routing to the tokenizer (its own `echo` decodes requests itself)."""
    async with started(build_server(gateway_settings(), routing(tokenizer=f"127.0.0.1:{tokenizer_server.port}"))) as s:
        yield s


@pytest.fixture
async def servers(tokenizer_server, vision_server, text_server, transformer_server, gateway) -> dict[str, int]:
    """Every service and the gateway: name -> port."""
    return {
        "tokenizer": tokenizer_server.port,
        "vision": vision_server.port,
        "text": text_server.port,
        "transformer": transformer_server.port,
        "gateway": gateway.port,
    }


def echo_request(datatype: str, shape: list[int], raw: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="X", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request


async def test_shapes_numpy_cannot_build_are_invalid_argument_naming_the_limit(servers: dict[str, int]):
    for port in servers.values():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            await assert_status(
                v2.ModelInfer(echo_request("INT8", [1] * 65, b"\x01")),
                grpc.StatusCode.INVALID_ARGUMENT,
                "65 dimensions; at most 64",
            )
            await assert_status(
                v2.ModelInfer(echo_request("INT8", [0, 2**62, 2**62], b"")),
                grpc.StatusCode.INVALID_ARGUMENT,
                "nonzero dimensions multiply to over 2147483648",
            )
            await assert_status(
                v2.ModelInfer(echo_request("FP64", [0, 2**40, 2**30], b"")),
                grpc.StatusCode.INVALID_ARGUMENT,
                "over 2147483648",
            )
            await assert_still_serving(v2)


async def test_a_26_byte_request_declaring_134_million_strings_allocates_nothing(servers: dict[str, int]):
    request = echo_request("BYTES", [134217728], b"")
    assert request.ByteSize() < 40
    for port in servers.values():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            tracemalloc.start()
            try:
                details = await assert_status(v2.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak < 8 << 20, f"{peak / 2**20:.0f} MiB allocated for a 26-byte request"
            assert "134217728 BYTES elements need at least 536870912 bytes (a 4-byte length each), got 0" in details
            await assert_still_serving(v2)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares `width` x `height` pixels (the pixel data is a 1x1 image's)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


async def test_decompression_bombs_and_too_many_pixels_are_resource_exhausted(vision_server: GrpcServer):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{vision_server.port}") as channel:
        typed = vision_pb2_grpc.VisionServiceStub(channel)

        def request(*images: bytes) -> vision_pb2.ClassifyImageRequest:
            return vision_pb2.ClassifyImageRequest(images=[vision_pb2.Image(encoded=image) for image in images])

        await assert_status(
            typed.ClassifyImage(request(png_header(20000, 20000))),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "images[0] has more pixels than the limit of 16777216 per image",
        )
        await assert_status(
            typed.ClassifyImage(request(png_header(28, 28), png_header(5000, 5000))),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "images[1] is 5000x5000 pixels; the limit is 16777216 per image",
        )
        await assert_status(
            typed.ClassifyImage(request(*[png_header(4096, 2048)] * 5)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the images hold 41943040 pixels in all; the limit is 33554432 per request",
        )
        answer = await typed.ClassifyImage(request(png_header(1, 1)))
        assert len(answer.results) == 1


@pytest.mark.parametrize("padding", [4, 99, -1, 2**31 - 1])
async def test_an_unknown_padding_value_is_invalid_argument(tokenizer_server: GrpcServer, padding: int):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tokenizer_server.port}") as channel:
        typed = tokenizer_pb2_grpc.TokenizerServiceStub(channel)
        await assert_status(
            typed.Tokenize(tokenizer_pb2.TokenizeRequest(texts=["hello"], padding=padding)),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"padding {padding} is not a Padding value; use one of PADDING_UNSPECIFIED",
        )
        answer = await typed.Tokenize(tokenizer_pb2.TokenizeRequest(texts=["hello"]))
        assert answer.encodings[0].tokens == ["[CLS]", "hello", "[SEP]"]


async def test_a_16_mb_sequence_is_refused_before_anything_is_padded(text_server, transformer_server):
    items = [common_pb2.TokenizedText(input_ids=[101, 102])] * 7
    items.append(common_pb2.TokenizedText(input_ids=np.full(2_000_000, 1000).tolist()))
    text, transformer = text_pb2_grpc.TextServiceStub, transformer_pb2_grpc.TransformerServiceStub
    calls = [
        (text_server.port, text, "ClassifyText", text_pb2.ClassifyTextRequest(items=items)),
        (transformer_server.port, transformer, "Embed", transformer_pb2.EmbedRequest(items=items)),
        (transformer_server.port, transformer, "ClassifyText", transformer_pb2.ClassifyTextRequest(items=items)),
    ]
    del items
    for port, stub, method, request in calls:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=LARGE) as channel:
            tracemalloc.start()
            try:
                details = await assert_status(getattr(stub(channel), method)(request), grpc.StatusCode.INVALID_ARGUMENT)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak < 96 << 20, f"{method}: {peak / 2**20:.0f} MiB allocated for {request.ByteSize()} bytes"
            assert "items[7] has 2000000 tokens; at most 512" in details


def undecodable_then_valid() -> list[bytes]:
    valid = echo_request("INT32", [2], np.array([7, 8], "<i4").tobytes()).SerializeToString()
    return [b"\x0a\x02\xff\xfe", *[valid] * 5]


async def test_each_undecodable_stream_message_gets_its_own_error_and_the_stream_goes_on(servers: dict[str, int]):
    for port in (servers["tokenizer"], servers["gateway"]):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = channel.stream_stream(
                "/inference.GRPCInferenceService/ModelStreamInfer",
                request_serializer=lambda body: body,
                response_deserializer=pb.ModelStreamInferResponse.FromString,
            )
            for _ in range(20):
                responses = [r async for r in stream(iter(undecodable_then_valid()), timeout=10)]
                assert len(responses) == 6
                assert "not a valid protobuf message" in responses[0].error_message
                for response in responses[1:]:
                    assert not response.error_message
                    assert np.frombuffer(response.infer_response.raw_output_contents[0], "<i4").tolist() == [7, 8]


class GatedLinear(LinearModel):
    """The linear model whose predictions, once `armed` is set (after its warm-up), wait until `gate` is set:
    a model kept busy on purpose. The events belong to the class (the one test using it resets them)."""

    armed = threading.Event()
    running = threading.Event()
    gate = threading.Event()

    def predict(self, batch: Arrays) -> Arrays:
        if self.armed.is_set():
            self.running.set()
            self.gate.wait(10)
        return super().predict(batch)


def linear_request(raw: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="linear")
    request.inputs.add(name="X", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(raw)
    return request


async def test_a_full_queue_refuses_before_the_request_is_decoded(tmp_path: Path):
    make_version(tmp_path, 1, scale=1.0)
    for event in (GatedLinear.armed, GatedLinear.running, GatedLinear.gate):
        event.clear()
    settings = ModelServiceSettings(model_repository=tmp_path, max_batch_size=1, max_queue_size=1)
    model = serve_model(GatedLinear, settings, name="linear")
    server = GrpcServer("gated", EchoSettings(port=0, metrics_port=0), ModelRegistry([echo_model(), model]))
    valid = linear_request(np.ones(4, "<f4").tobytes())
    async with started(server), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        GatedLinear.armed.set()
        running = v2.ModelInfer(valid)
        assert await asyncio.to_thread(GatedLinear.running.wait, 10)
        queued = v2.ModelInfer(valid)
        for _ in range(1000):
            if model.load_of("1").queue_depth:
                break
            await asyncio.sleep(0.01)
        assert model.load_of("1").queue_depth == 1, "the second request never reached the queue"
        await assert_status(
            v2.ModelInfer(linear_request(b"\x00" * 3)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "model 'linear' has 1 requests queued, its limit",
        )
        GatedLinear.gate.set()
        assert [list(r.outputs[0].shape) for r in (await running, await queued)] == [[1, 2], [1, 2]]
        await assert_status(
            v2.ModelInfer(linear_request(b"\x00" * 3)), grpc.StatusCode.INVALID_ARGUMENT, "needs 16 bytes"
        )
