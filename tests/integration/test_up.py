"""`maas up` as a user runs it: READY lines, clean stop on SIGTERM, failure when a service dies."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import socket
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from maas.common.v1 import common_pb2
from maas.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from maas.text.v1 import text_pb2, text_pb2_grpc
from maas.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from maas.vision.v1 import vision_pb2, vision_pb2_grpc
from services.cli.processes import read_ready
from services.common.codec import Tensor, encode_inputs
from tests.conftest import free_port
from tests.integration.processes import alive, descendants, maas_process, run_failing


async def read_ready_any(process: asyncio.subprocess.Process) -> tuple[str, str]:
    """The next READY line's service and address."""
    async for raw in process.stdout:
        words = raw.decode().split()
        if words[:1] == ["READY"]:
            return words[1], " ".join(words[2:])
    raise AssertionError("maas up exited before the next READY line")


def free_ports(repository: Path) -> dict[str, str]:
    return {
        "MAAS_MODEL_REPOSITORY": str(repository),
        "MAAS_TOKENIZER_PORT": "0",
        "MAAS_TOKENIZER_METRICS_PORT": "0",
        "MAAS_VISION_PORT": "0",
        "MAAS_VISION_METRICS_PORT": "0",
        "MAAS_TEXT_PORT": "0",
        "MAAS_TEXT_METRICS_PORT": "0",
        "MAAS_TRANSFORMER_PORT": "0",
        "MAAS_TRANSFORMER_METRICS_PORT": "0",
        "MAAS_GATEWAY_PORT": "0",
        "MAAS_GATEWAY_METRICS_PORT": "0",
    }


async def test_up_serves_every_service_and_stops_cleanly_on_sigterm(model_repository: Path):
    async with maas_process("up", ready="tokenizer", env=free_ports(model_repository)) as up:
        assert up.address.startswith("127.0.0.1:")
        ready = {}
        for _ in range(4):
            line = await read_ready_any(up.process)
            ready[line[0]] = line[1]
        assert set(ready) == {"vision", "text", "transformer", "gateway"}
        vision = ready["vision"]
        assert await read_ready(up.process, "all") == ""
        async with grpc.aio.insecure_channel(vision) as channel:
            stub = vision_pb2_grpc.VisionServiceStub(channel)
            image = vision_pb2.Image(raw=vision_pb2.RawImage(pixels=[0.0] * 784))
            response = await stub.ClassifyImage(vision_pb2.ClassifyImageRequest(images=[image]))
            assert response.model_version == "1"
        async with grpc.aio.insecure_channel(ready["text"]) as channel:
            stub = text_pb2_grpc.TextServiceStub(channel)
            item = common_pb2.TokenizedText(input_ids=[101, 2307, 11937, 16329, 102])
            response = await stub.ClassifyText(text_pb2.ClassifyTextRequest(items=[item]))
            assert len(response.results[0].labels) == 2
        async with grpc.aio.insecure_channel(up.address) as channel:
            stub = tokenizer_pb2_grpc.TokenizerServiceStub(channel)
            response = await stub.Tokenize(tokenizer_pb2.TokenizeRequest(texts=["up and running"]))
            assert response.encodings[0].tokens == ["[CLS]", "up", "and", "running", "[SEP]"]
        async with grpc.aio.insecure_channel(ready["gateway"]) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            response = await stub.Tokenize(tokenizer_pb2.TokenizeRequest(texts=["via the gateway"]))
            assert response.encodings[0].tokens == ["[CLS]", "via", "the", "gateway", "[SEP]"]
        up.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(up.process.wait(), 30) == 0


def ray_up_env(repository: Path) -> dict[str, str]:
    """`maas up --runtime ray` on free ports with a small local Ray: one replica per service, no Serve
    gRPC proxy (its HTTP proxy still starts, on a free loopback port)."""
    return {
        **free_ports(repository),
        "MAAS_RAY_GRPC_PORT": str(free_port()),
        "MAAS_RAY_HTTP_PORT": str(free_port()),
        "MAAS_RAY_NATIVE_PROXY": "false",
        "MAAS_RAY_MAX_REPLICAS": "1",
    }


LONG_TEXT = ("a " * 300).encode()
"""300 tokens in 600 bytes: 1,024 of them (600 KiB, under the tokenizer's 1 MiB per request) tokenize to
three INT64 [1024, 256] outputs, 6 MiB."""


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), value).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
async def test_up_on_ray_serves_every_model_through_the_gateway_and_stops_ray_on_sigterm(model_repository: Path):
    async with maas_process("up", "--runtime", "ray", ready="tokenizer", env=ray_up_env(model_repository)) as up:
        ready = {"tokenizer": up.address}
        for _ in range(4):
            service, address = await asyncio.wait_for(read_ready_any(up.process), 120)
            ready[service] = address
        assert set(ready) == {"tokenizer", "vision", "text", "transformer", "gateway"}
        assert await read_ready(up.process, "all") == ""
        ray_processes = descendants(up.process.pid)
        assert any("raylet" in command for command in alive(ray_processes).values())
        async with grpc.aio.insecure_channel(ready["gateway"]) as channel:
            gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
            image = await gateway.ClassifyImage(gateway_pb2.ClassifyImageRequest(images=[png(0)]), timeout=30)
            assert image.model_version == "1" and len(image.results[0].labels) == 1
            for model in (gateway_pb2.TEXT_MODEL_LSTM, gateway_pb2.TEXT_MODEL_TRANSFORMER):
                text = gateway_pb2.ClassifyTextRequest(texts=["Great coffee, would buy again."], model=model)
                classified = await gateway.ClassifyText(text, timeout=30)
                assert len(classified.results[0].labels) == 2, model
            embedded = await gateway.Embed(gateway_pb2.EmbedRequest(texts=["a sentence"]), timeout=30)
            assert len(embedded.embeddings[0].values) == 384
        large = [("grpc.max_receive_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(ready["tokenizer"], options=large) as channel:
            texts = Tensor("TEXT", "BYTES", np.array([LONG_TEXT] * 1024, dtype=object))
            request = v2pb.ModelInferRequest(model_name="tokenizer")
            encode_inputs(request, [texts])
            tokens = await grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
            assert tokens.ByteSize() > 4 << 20, "an answer over Ray's default 4 MiB transport limit"
            assert list(tokens.outputs[0].shape) == [1024, 256]
        up.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(up.process.wait(), 60) == 0
        deadline = time.monotonic() + 30
        while left := alive(ray_processes):
            assert time.monotonic() < deadline, f"processes maas up started still run: {left}"
            await asyncio.sleep(0.5)


async def run_up_to_failure(env: dict[str, str]) -> bytes:
    """Run `maas up` expecting it to fail; return its stderr."""
    stdout, stderr = await run_failing("up", env=env)
    assert b"READY all" not in stdout
    return stderr


async def test_up_fails_when_a_service_cannot_start(model_repository: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**free_ports(model_repository), "MAAS_TOKENIZER_PORT": str(taken.getsockname()[1])}
        env["MAAS_LOG_FORMAT"] = "json"
        stderr = await run_up_to_failure(env)
    assert b"tokenizer exited before it was ready" in stderr
    logged = [line for line in stderr.decode().splitlines() if line.startswith("tokenizer | ")]
    failure = [json.loads(line.removeprefix("tokenizer | ")) for line in logged if "failed to start" in line]
    assert failure and failure[0]["level"] == "ERROR" and failure[0]["ts"].endswith("Z"), stderr


async def test_up_fails_with_a_clear_message_when_the_tokenizer_was_never_exported(tmp_path: Path):
    stderr = await run_up_to_failure(free_ports(tmp_path))
    assert b"run `maas models export-tokenizer`" in stderr
    assert b"Traceback" not in stderr
