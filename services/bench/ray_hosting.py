"""Ray hosting benchmark: one model under the grpc hosting, the ray default path and Serve's own proxy."""

from __future__ import annotations

import json
import socket

import grpc
import numpy as np

from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from services.bench.loadgen import closed_loop
from services.bench.report import Row, Section
from services.bench.settings import BenchConfig
from services.cli.processes import running
from services.common.codec import Tensor, encode_inputs
from services.vision.data import load_split
from services.vision.spec import MODEL_NAME

CONCURRENCIES = (1, 16)
GRPC_ROW = "grpc hosting (own process)"
FRONT_ROW = "ray, default path (maas front, DeploymentHandle)"
PROXY_ROW = "ray, Serve's native gRPC proxy"


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _measure(
    config: BenchConfig, address: str, request: v2pb.ModelInferRequest, label: str, metadata=()
) -> list[Row]:
    rows = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for concurrency in CONCURRENCIES:
            result = await closed_loop(
                lambda: stub.ModelInfer(request, metadata=metadata), concurrency, config.duration, config.warmup
            )
            rows.append(Row(label, result))
    return rows


async def ray_section(config: BenchConfig) -> Section:
    """fashion_cnn on one image per request: grpc hosting vs the ray hosting's two gRPC paths."""
    section = Section(
        title="Ray hosting (fashion_cnn)",
        note=(
            "One request = one Fashion-MNIST test image (v2 ModelInfer, IMAGE FP32 [1,1,28,28]), the same for "
            "every row. grpc hosting: `maas run vision`. Ray: `maas run ray` hosting vision alone on a local "
            "Ray (one replica, 1 torch thread, the same dynamic batcher); the default path is the maas front "
            "(our grpc.aio server) calling the replica by DeploymentHandle and sending requests that arrive "
            "while calls are in flight together; the native path is Serve's own gRPC proxy (metadata "
            "`application: vision`, RAY_SERVE_USE_GRPC_BY_DEFAULT=1) calling the replica's ModelInfer."
        ),
    )
    images, _ = load_split("test")
    request = v2pb.ModelInferRequest(model_name=MODEL_NAME)
    encode_inputs(request, [Tensor("IMAGE", "FP32", np.ascontiguousarray(images[:1]))])
    env = {"MAAS_VISION_METRICS_PORT": "0", "MAAS_MODEL_REPOSITORY": str(config.repository)}
    async with running("vision", "--port", "0", env=env) as address:
        section.rows += await _measure(config, address, request, GRPC_ROW)
    proxy_port = free_port()
    ray_env = {
        **env,
        "MAAS_VISION_PORT": "0",
        "MAAS_RAY_SERVICES": json.dumps(["vision"]),
        "MAAS_RAY_MIN_REPLICAS": "1",
        "MAAS_RAY_MAX_REPLICAS": "1",
        "MAAS_RAY_GRPC_PORT": str(proxy_port),
        "MAAS_RAY_HTTP_PORT": str(free_port()),
    }
    async with running("ray", env=ray_env, ready_as="vision") as address:
        section.rows += await _measure(config, address, request, FRONT_ROW)
        proxy = f"127.0.0.1:{proxy_port}"
        section.rows += await _measure(config, proxy, request, PROXY_ROW, (("application", "vision"),))
    high = max(CONCURRENCIES)
    front, proxy_high, direct = (section.row(label, high).throughput for label in (FRONT_ROW, PROXY_ROW, GRPC_ROW))
    section.findings = [
        f"At concurrency {high}, the ray default path serves {front / proxy_high:.1f}x the requests of Serve's "
        f"native proxy ({front:,.0f} vs {proxy_high:,.0f} req/s; target: at least 2x).",
        f"The ray default path reaches {front / direct:.0%} of the grpc hosting's throughput ({direct:,.0f} req/s).",
        f"At concurrency 1, p50 is {section.row(GRPC_ROW, 1).p50_ms:.2f} ms (grpc), "
        f"{section.row(FRONT_ROW, 1).p50_ms:.2f} ms (ray default), {section.row(PROXY_ROW, 1).p50_ms:.2f} ms (native).",
    ]
    return section
