"""`maas up` as a user runs it: READY lines, clean stop on SIGTERM, failure when a service dies."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

import grpc

from maas.common.v1 import common_pb2
from maas.gateway.v1 import gateway_pb2_grpc
from maas.text.v1 import text_pb2, text_pb2_grpc
from maas.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from maas.vision.v1 import vision_pb2, vision_pb2_grpc
from tests.conftest import PYTHON, REPO_ROOT
from tests.integration.processes import maas_process, read_ready


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


async def run_up_to_failure(env: dict[str, str]) -> bytes:
    """Run `maas up` expecting it to fail; return its stderr."""
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "services.cli.main",
        "up",
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert b"READY all" not in stdout
    return stderr


async def test_up_fails_when_a_service_cannot_start(model_repository: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**free_ports(model_repository), "MAAS_TOKENIZER_PORT": str(taken.getsockname()[1])}
        stderr = await run_up_to_failure(env)
    assert b"tokenizer exited before it was ready" in stderr


async def test_up_fails_with_a_clear_message_when_the_tokenizer_was_never_exported(tmp_path: Path):
    stderr = await run_up_to_failure(free_ports(tmp_path))
    assert b"run `maas models export-tokenizer`" in stderr
    assert b"Traceback" not in stderr
