"""Large requests to real service processes: while one at the service's limits runs, health checks
still answer at once; work over the limits is refused; and a call whose caller has gone stops."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from maas.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from maas.vision.v1 import vision_pb2, vision_pb2_grpc
from services.common.codec import Tensor, decode_outputs, encode_inputs
from services.tokenizer.model import Padding, newest_tokenizer, to_arrays
from tests.contract.test_v2_echo import assert_status
from tests.integration.processes import maas_process

T = TypeVar("T")
LARGE = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
MAX_TEXT_BYTES = 100_000
MAX_REQUEST_BYTES = 1 << 20
IMAGE_SIDE = 4096
MAX_IMAGE_BYTES = 4 << 20
MAX_REQUEST_PIXELS = 1 << 25
"""The services' default limits (`TokenizerSettings`, `VisionSettings`), written out so that the requests
are the same whatever the code under test."""
REVIEW = "Great taffy at a great price; there was a wide assortment of yummy taffy, and delivery was quick. "


def env(service: str, repository: Path) -> dict[str, str]:
    prefix = f"MAAS_{service.upper()}_"
    return {"MAAS_MODEL_REPOSITORY": str(repository), f"{prefix}METRICS_PORT": "0"}


def maximal_texts() -> list[str]:
    """Texts at the tokenizer's default limits: 100,000 bytes each, 1 MiB in all."""
    texts, left = [], MAX_REQUEST_BYTES
    while left:
        size = min(MAX_TEXT_BYTES, left)
        texts.append((REVIEW * (size // len(REVIEW) + 1))[:size])
        left -= size
    return texts


def maximal_images() -> list[bytes]:
    """PNGs at the vision service's default limits: 4096x4096 pixels each (under 4 MiB encoded), as many
    pixels as a request may hold in all."""
    rows = np.linspace(0, 255, IMAGE_SIDE, dtype=np.uint8)[:, None]
    pixels = (rows + np.arange(IMAGE_SIDE, dtype=np.uint8)[None, :] // 64).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    assert len(buffer.getvalue()) <= MAX_IMAGE_BYTES
    return [buffer.getvalue()] * (MAX_REQUEST_PIXELS // IMAGE_SIDE**2)


async def health_latencies_during(address: str, call: Callable[[], Awaitable[T]]) -> tuple[list[float], float, T]:
    """Check health every 5 ms while `call()` runs, three times over; returns each check's seconds, the
    mean seconds of one call, and the last call's answer."""

    async def calls() -> T:
        for _ in range(2):
            await call()
        return await call()

    started_calls = time.perf_counter()
    task = asyncio.ensure_future(calls())
    latencies = []
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest())
        while not task.done():
            started = time.perf_counter()
            await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)
    answer = await task
    return latencies, (time.perf_counter() - started_calls) / 3, answer


def assert_health_answered(latencies: list[float], call_seconds: float) -> None:
    """The event loop answered health checks throughout: a loop held by the request would keep a check
    waiting about as long as a whole call (the p99 target itself is in the reliability run)."""
    p99 = float(np.percentile(latencies, 99))
    assert p99 < call_seconds / 2, f"health p99 {p99 * 1000:.0f} ms, a call {call_seconds * 1000:.0f} ms"
    assert len(latencies) >= 30, f"the requests took only {len(latencies)} health checks"


async def two_callers_beside_health(
    service: str, repository: Path, call: Callable[[grpc.aio.Channel], Awaitable[T]]
) -> list[T]:
    """Start `maas run SERVICE`; two callers make `call` at once, three times over, while health is checked
    (`assert_health_answered`); returns the last two answers."""
    async with (
        maas_process("run", service, "--port", "0", ready=service, env=env(service, repository)) as s,
        grpc.aio.insecure_channel(s.address, options=LARGE) as channel,
    ):

        async def two_callers() -> list[T]:
            return list(await asyncio.gather(call(channel), call(channel)))

        latencies, call_seconds, answers = await health_latencies_during(s.address, two_callers)
    assert_health_answered(latencies, call_seconds)
    return answers


async def test_health_answers_while_maximal_tokenizer_requests_run(model_repository: Path):
    texts = maximal_texts()
    request = v2pb.ModelInferRequest(model_name="tokenizer")
    encode_inputs(request, [Tensor("TEXT", "BYTES", np.array([t.encode() for t in texts], dtype=object))])
    async with (
        maas_process("run", "tokenizer", "--port", "0", ready="tokenizer", env=env("tokenizer", model_repository)) as s,
        grpc.aio.insecure_channel(s.address, options=LARGE) as channel,
    ):
        typed = tokenizer_pb2_grpc.TokenizerServiceStub(channel)
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        tokenize = tokenizer_pb2.TokenizeRequest(texts=texts, max_length=512)
        latencies, call_seconds, tokenized = await health_latencies_during(
            s.address, lambda: typed.Tokenize(tokenize, timeout=60)
        )
        assert_health_answered(latencies, call_seconds)
        assert [len(e.input_ids) for e in tokenized.encodings] == [512] * len(texts)
        latencies, call_seconds, inferred = await health_latencies_during(
            s.address, lambda: v2.ModelInfer(request, timeout=60)
        )
        assert_health_answered(latencies, call_seconds)
        assert list(inferred.outputs[0].shape) == [len(texts), 256]
        ids = tokenizer_pb2.IdSequence(ids=[2307] * 512)
        detokenize = tokenizer_pb2.DetokenizeRequest(sequences=[ids] * 1024)
        latencies, call_seconds, detokenized = await health_latencies_during(
            s.address, lambda: typed.Detokenize(detokenize, timeout=60)
        )
        assert_health_answered(latencies, call_seconds)
        assert len(detokenized.texts) == 1024
        await assert_status(
            typed.Tokenize(tokenizer_pb2.TokenizeRequest(texts=[*texts, "one more"])),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the texts hold 1048584 bytes in all; the limit is 1048576 per request",
        )
        await assert_status(
            typed.Detokenize(
                tokenizer_pb2.DetokenizeRequest(sequences=[*[ids] * 1023, tokenizer_pb2.IdSequence(ids=[1] * 513)])
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "sequences hold 524289 token ids in all; the limit is 524288 per request",
        )


async def test_health_answers_while_a_maximal_image_request_runs(model_repository: Path):
    images = [vision_pb2.Image(encoded=image) for image in maximal_images()]
    async with (
        maas_process("run", "vision", "--port", "0", ready="vision", env=env("vision", model_repository)) as service,
        grpc.aio.insecure_channel(service.address, options=LARGE) as channel,
    ):
        typed = vision_pb2_grpc.VisionServiceStub(channel)
        request = vision_pb2.ClassifyImageRequest(images=images)
        latencies, call_seconds, classified = await health_latencies_during(
            service.address, lambda: typed.ClassifyImage(request, timeout=60)
        )
        assert_health_answered(latencies, call_seconds)
        assert len(classified.results) == len(images)


async def test_health_answers_while_two_callers_classify_1024_images_each(model_repository: Path):
    shirt = (Path(__file__).parents[2] / "docs" / "examples" / "shirt.png").read_bytes()
    request = vision_pb2.ClassifyImageRequest(images=[vision_pb2.Image(encoded=shirt)] * 1024)
    classified = await two_callers_beside_health(
        "vision",
        model_repository,
        lambda channel: vision_pb2_grpc.VisionServiceStub(channel).ClassifyImage(request, timeout=60),
    )
    assert [len(response.results) for response in classified] == [1024, 1024]
    assert len({result.labels[0].name for response in classified for result in response.results}) == 1


async def test_health_answers_while_two_callers_tokenize_1024_texts_each(model_repository: Path):
    share = MAX_REQUEST_BYTES // 1024
    texts = [(REVIEW[i % len(REVIEW) :] + REVIEW * (share // len(REVIEW) + 1))[:share] for i in range(1024)]
    request = v2pb.ModelInferRequest(model_name="tokenizer")
    encode_inputs(request, [Tensor("TEXT", "BYTES", np.array([t.encode() for t in texts], dtype=object))])
    want = to_arrays(newest_tokenizer(model_repository).encode(texts, padding=Padding.LONGEST))
    answers = await two_callers_beside_health(
        "tokenizer",
        model_repository,
        lambda channel: grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60),
    )
    for answer in answers:
        got = decode_outputs(answer)
        assert got["INPUT_IDS"].array.shape == (1024, 256)
        for name, array in zip(("INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS"), want, strict=True):
            np.testing.assert_array_equal(got[name].array, array)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_work_stops_when_the_caller_has_gone(model_repository: Path):
    async with (
        maas_process("run", "tokenizer", "--port", "0", ready="tokenizer", env=env("tokenizer", model_repository)) as s,
        grpc.aio.insecure_channel(s.address, options=LARGE) as channel,
    ):
        typed = tokenizer_pb2_grpc.TokenizerServiceStub(channel)
        request = tokenizer_pb2.TokenizeRequest(texts=maximal_texts(), max_length=512)
        started = time.perf_counter()
        await typed.Tokenize(request, timeout=60)
        alone = time.perf_counter() - started
        await assert_status(typed.Tokenize(request, timeout=alone / 10), grpc.StatusCode.DEADLINE_EXCEEDED)
        await asyncio.sleep(0.1)
        before = cpu_seconds(s.process.pid)
        await asyncio.sleep(alone)
        busy = cpu_seconds(s.process.pid) - before
        assert busy < alone / 5, f"{busy:.2f} s of CPU in the {alone:.2f} s (the request's time) after its caller left"
