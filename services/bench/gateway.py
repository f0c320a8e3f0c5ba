"""Gateway benchmark: the same v2 calls direct to a service and through the gateway, beside an echo
hop, and the CPU the gateway spends per request."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
import tempfile
import urllib.request
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import numpy as np

from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from services.bench.loadgen import alternating, interleaved
from services.bench.report import Row, Section
from services.bench.settings import BenchConfig
from services.bench.tokenizer import REVIEWS
from services.cli.processes import running, serving
from services.common.codec import Tensor, encode_inputs
from services.gateway.routing import ModelRoute, Routing, Target

CONCURRENCY = 16
MODEL = "minilm_embed"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scrape(port: int) -> tuple[float, float]:
    """The gateway's CPU seconds so far and its count of successful ModelInfer calls on MODEL."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    cpu = re.search(r"^process_cpu_seconds_total (\S+)$", text, re.M)
    calls = re.search(
        rf'^maas_grpc_requests_total{{code="OK",method="ModelInfer",model="{MODEL}",version="[^"]*"}} (\S+)$',
        text,
        re.M,
    )
    return float(cpu.group(1)) if cpu else 0.0, float(calls.group(1)) if calls else 0.0


def _request(model: str, tensors: list[Tensor]) -> v2pb.ModelInferRequest:
    request = v2pb.ModelInferRequest(model_name=model)
    encode_inputs(request, tensors)
    return request


async def gateway_section(config: BenchConfig) -> Section:
    """Measure direct vs through-the-gateway latency at concurrency 1 and throughput at 16."""
    section = Section(
        title="Gateway",
        note=(
            "The tokenizer, the transformer and the gateway run as their own processes (`maas run`), the gateway "
            "routing to the other two by a routing file. The same v2 requests go direct to the owning service and "
            "through the gateway. At concurrency 1 the calls alternate call by call; `echo` at the gateway is one "
            f"hop (the gateway answers it itself) and `echo` at the transformer the same hop to a model service. "
            f"`{MODEL}` gets one review tokenized at its own length ({len(REVIEWS[0])} characters). Gateway CPU is "
            "the gateway process's CPU time over the requests it served at concurrency "
            f"{CONCURRENCY} (Prometheus `process_cpu_seconds_total`). At concurrency {CONCURRENCY}, direct and "
            "through-the-gateway loads take turns in four rounds, so drift on a shared machine falls on both. "
            f"A bare relay (`services/bench/relay.py`: its own process passing `{MODEL}`'s ModelInfer bytes to the "
            "transformer, no interceptor, no parsing, no routing) is the floor of any Python grpc.aio hop, "
            "measured in the same alternation."
        ),
    )
    env = {"MAAS_MODEL_REPOSITORY": str(config.repository)}
    metrics_port = _free_port()
    async with AsyncExitStack() as stack:
        tokenizer = await stack.enter_async_context(
            running("tokenizer", "--port", "0", env={**env, "MAAS_TOKENIZER_METRICS_PORT": "0"})
        )
        transformer = await stack.enter_async_context(
            running("transformer", "--port", "0", env={**env, "MAAS_TRANSFORMER_METRICS_PORT": "0"})
        )
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maas-bench-")))
        routing = Routing(
            targets={
                "tokenizer": Target(address=f"dns:///{tokenizer}"),
                "transformer": Target(address=f"dns:///{transformer}"),
            },
            models={"tokenizer": ModelRoute(target="tokenizer"), MODEL: ModelRoute(target="transformer")},
        )
        (workdir / "routing.yaml").write_text(routing.to_yaml(), encoding="utf-8")
        gateway_env = {
            "MAAS_GATEWAY_ROUTING_FILE": str(workdir / "routing.yaml"),
            "MAAS_GATEWAY_METRICS_PORT": str(metrics_port),
        }
        gateway = await stack.enter_async_context(running("gateway", "--port", "0", env=gateway_env))
        relay_process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.bench.relay", transformer, stdout=asyncio.subprocess.PIPE
        )
        relay = await stack.enter_async_context(serving(relay_process, "relay"))
        via = grpc_service_pb2_grpc.GRPCInferenceServiceStub(
            await stack.enter_async_context(grpc.aio.insecure_channel(gateway))
        )
        tokenizer_v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(
            await stack.enter_async_context(grpc.aio.insecure_channel(tokenizer))
        )
        direct = grpc_service_pb2_grpc.GRPCInferenceServiceStub(
            await stack.enter_async_context(grpc.aio.insecure_channel(transformer))
        )
        bare = grpc_service_pb2_grpc.GRPCInferenceServiceStub(
            await stack.enter_async_context(grpc.aio.insecure_channel(relay))
        )
        texts = Tensor("TEXT", "BYTES", np.array([REVIEWS[0].encode()], dtype=object))
        tokens = await tokenizer_v2.ModelInfer(_request("tokenizer", [texts]))
        ids = np.frombuffer(tokens.raw_output_contents[0], "<i8").reshape(1, -1)
        model = _request(
            MODEL, [Tensor("INPUT_IDS", "INT64", ids), Tensor("ATTENTION_MASK", "INT64", np.ones_like(ids))]
        )
        echo = _request("echo", [texts])
        tokenize = _request("tokenizer", [texts])
        calls = {
            "echo at the transformer (one hop)": lambda: direct.ModelInfer(echo),
            "echo at the gateway (one hop)": lambda: via.ModelInfer(echo),
            "tokenizer, direct": lambda: tokenizer_v2.ModelInfer(tokenize),
            "tokenizer, through the gateway": lambda: via.ModelInfer(tokenize),
            f"{MODEL}, direct": lambda: direct.ModelInfer(model),
            f"{MODEL}, through the gateway": lambda: via.ModelInfer(model),
            f"{MODEL}, through a bare relay": lambda: bare.ModelInfer(model),
        }
        results = await interleaved(calls, config.duration, config.warmup)
        section.rows += [Row(label, result) for label, result in results.items()]
        cpu_before, calls_before = await asyncio.to_thread(_scrape, metrics_port)
        loaded = await alternating(
            {
                f"{MODEL}, direct": lambda: direct.ModelInfer(model),
                f"{MODEL}, through the gateway": lambda: via.ModelInfer(model),
            },
            CONCURRENCY,
            config.duration,
            config.warmup,
        )
        cpu_after, calls_after = await asyncio.to_thread(_scrape, metrics_port)
        section.rows += [Row(label, result) for label, result in loaded.items()]
    cpu_us = (cpu_after - cpu_before) / max(calls_after - calls_before, 1) * 1e6
    added = section.row(f"{MODEL}, through the gateway", 1).p50_ms - section.row(f"{MODEL}, direct", 1).p50_ms
    added_tokenizer = (
        section.row("tokenizer, through the gateway", 1).p50_ms - section.row("tokenizer, direct", 1).p50_ms
    )
    hop = section.row("echo at the transformer (one hop)", 1).p50_ms
    floor = section.row(f"{MODEL}, through a bare relay", 1).p50_ms - section.row(f"{MODEL}, direct", 1).p50_ms
    via_high = section.row(f"{MODEL}, through the gateway", CONCURRENCY).throughput
    direct_high = section.row(f"{MODEL}, direct", CONCURRENCY).throughput
    section.findings = [
        f"The gateway adds {added:.2f} ms p50 to `{MODEL}` at concurrency 1 (target: at most 1.0 ms) and "
        f"{added_tokenizer:.2f} ms to the tokenizer; one `echo` hop costs {hop:.2f} ms p50. A bare relay adds "
        f"{floor:.2f} ms to `{MODEL}`: the floor of a Python grpc.aio hop on this machine.",
        f"Through the gateway at concurrency {CONCURRENCY}, `{MODEL}` serves {via_high / direct_high:.0%} of its "
        f"direct throughput ({via_high:,.1f} vs {direct_high:,.1f} req/s; target: at least 80%).",
        f"The gateway spends {cpu_us:,.0f} µs of CPU per request at concurrency {CONCURRENCY}.",
    ]
    return section
