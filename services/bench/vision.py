"""Vision benchmark: fashion_cnn beside echo, batching on vs off, and the in-process forward pass."""

from __future__ import annotations

import grpc
import numpy as np
import torch

from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from services.bench.loadgen import closed_loop, in_process, interleaved
from services.bench.report import Row, Section
from services.bench.settings import BenchConfig
from services.cli.processes import running
from services.common.codec import Tensor, encode_inputs
from services.common.repository import newest_source, read_version
from services.vision.data import load_split
from services.vision.model import FoldedCNN
from services.vision.spec import MODEL_NAME

BATCHED = 32


def _request(model: str, image: np.ndarray) -> v2pb.ModelInferRequest:
    request = v2pb.ModelInferRequest(model_name=model)
    encode_inputs(request, [Tensor("IMAGE", "FP32", image)])
    return request


async def _served(config: BenchConfig, max_batch_size: int, concurrencies: list[int], image) -> list[Row]:
    """Rows for one server: echo and fashion_cnn alternated at concurrency 1, then each concurrency."""
    env = {
        "MAAS_VISION_METRICS_PORT": "0",
        "MAAS_MODEL_REPOSITORY": str(config.repository),
        "MAAS_VISION_MAX_BATCH_SIZE": str(max_batch_size),
    }
    label = f"fashion_cnn, batching {'on' if max_batch_size > 1 else 'off'}"
    rows = []
    async with running("vision", "--port", "0", env=env) as address, grpc.aio.insecure_channel(address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        echo, model = _request("echo", image), _request(MODEL_NAME, image)
        if 1 in concurrencies:
            pair = {"echo (v2)": lambda: stub.ModelInfer(echo), label: lambda: stub.ModelInfer(model)}
            results = await interleaved(pair, config.duration, config.warmup)
            rows += [Row(name, result) for name, result in results.items()]
        for concurrency in (c for c in concurrencies if c > 1):
            result = await closed_loop(lambda: stub.ModelInfer(model), concurrency, config.duration, config.warmup)
            rows.append(Row(label, result))
    return rows


async def vision_section(config: BenchConfig) -> Section:
    """Measure fashion_cnn against echo, with and without batching, and against in-process forward."""
    section = Section(
        title="Vision (fashion_cnn)",
        note=(
            "One request = one Fashion-MNIST test image (IMAGE FP32 [1,1,28,28]); `echo` gets the same request, "
            "alternating call by call with fashion_cnn at concurrency 1 so both see the same machine. "
            f"The service runs as its own process with 1 torch thread; batching on = up to {BATCHED} rows per "
            "execution, dispatched as soon as the model is free (no queue delay); off = MAX_BATCH_SIZE 1. "
            f"In-process rows run the same network on one thread at batch 1 and {BATCHED} (req/s there counts calls)."
        ),
    )
    images, _ = load_split("test")
    image = images[:1]
    high = max(config.concurrencies)
    section.rows += await _served(config, BATCHED, list(config.concurrencies), image)
    section.rows += await _served(config, 1, [high], image)
    directory = newest_source(config.repository, MODEL_NAME)
    network = FoldedCNN(directory, read_version(directory, MODEL_NAME).architecture["hyperparameters"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for batch in (1, BATCHED):
            inputs = images[:batch]
            result = in_process(lambda x=inputs: network(x), config.duration, config.warmup)
            section.rows.append(Row(f"in-process forward, batch {batch}", result))
    finally:
        torch.set_num_threads(threads)
    overhead = section.row("fashion_cnn, batching on", 1).p50_ms - section.row("echo (v2)", 1).p50_ms
    on_high = section.row("fashion_cnn, batching on", high).throughput
    off_high = section.row("fashion_cnn, batching off", high).throughput
    forward = section.row(f"in-process forward, batch {BATCHED}", 1).throughput * BATCHED
    section.findings = [
        f"fashion_cnn adds {overhead:.2f} ms p50 over `echo` at concurrency 1 (target: at most 0.5 ms).",
        f"At concurrency {high}, batching on serves {on_high / off_high:.1f}x the requests of batching off "
        f"({on_high:,.0f} vs {off_high:,.0f} req/s; target: at least 2x).",
        f"Served with batching at concurrency {high} reaches {on_high / forward:.0%} of the in-process forward "
        f"pass at batch {BATCHED} ({forward:,.0f} images/s on one thread).",
    ]
    return section
