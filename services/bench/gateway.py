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


async def _backends(stack: AsyncExitStack, config: BenchConfig) -> tuple[str, str, Path]:
    """Start the tokenizer and the transformer as processes for the rest of `stack`, and write a routing file
    of the tokenizer and MODEL to them.

    Returns:
        The tokenizer's and the transformer's addresses, and the routing file.
    """
    env = {"MAAS_MODEL_REPOSITORY": str(config.repository)}
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
    return tokenizer, transformer, workdir / "routing.yaml"


async def _model_request(tokenizer: grpc_service_pb2_grpc.GRPCInferenceServiceStub) -> v2pb.ModelInferRequest:
    """MODEL's request: one review, tokenized by the tokenizer at its own length."""
    texts = Tensor("TEXT", "BYTES", np.array([REVIEWS[0].encode()], dtype=object))
    tokens = await tokenizer.ModelInfer(_request("tokenizer", [texts]))
    ids = np.frombuffer(tokens.raw_output_contents[0], "<i8").reshape(1, -1)
    return _request(MODEL, [Tensor("INPUT_IDS", "INT64", ids), Tensor("ATTENTION_MASK", "INT64", np.ones_like(ids))])


async def http_section(config: BenchConfig) -> Section:
    """Measure the gRPC hop through a gateway serving HTTP beside it and through one that does not."""
    section = Section(
        title="Gateway with HTTP on and off",
        note=(
            "Whether serving the REST binding beside gRPC slows the gRPC path. The tokenizer and the transformer run "
            "as their own processes; two gateways route to them, one serving HTTP on its own port "
            "(`MAAS_GATEWAY_HTTP_ENABLED=true`, idle) and one not (`false`). The same v2 requests go direct and "
            "through each gateway: at concurrency 1 call by call in turn; at concurrency "
            f"{CONCURRENCY} in four rounds of closed loops, taking turns. `{MODEL}` gets one review tokenized at its "
            "own length; `tokenizer` the same review as text."
        ),
    )
    async with AsyncExitStack() as stack:
        tokenizer, transformer, routing_file = await _backends(stack, config)
        stubs = {
            "direct (tokenizer)": tokenizer,
            f"direct ({MODEL})": transformer,
        }
        for state in ("on", "off"):
            env = {
                "MAAS_GATEWAY_ROUTING_FILE": str(routing_file),
                "MAAS_GATEWAY_METRICS_PORT": "0",
                "MAAS_GATEWAY_HTTP_ENABLED": "true" if state == "on" else "false",
                "MAAS_GATEWAY_HTTP_PORT": "0",
            }
            stubs[f"HTTP {state}"] = await stack.enter_async_context(running("gateway", "--port", "0", env=env))
        v2 = {
            name: grpc_service_pb2_grpc.GRPCInferenceServiceStub(
                await stack.enter_async_context(grpc.aio.insecure_channel(address))
            )
            for name, address in stubs.items()
        }
        texts = Tensor("TEXT", "BYTES", np.array([REVIEWS[0].encode()], dtype=object))
        tokenize = _request("tokenizer", [texts])
        model = await _model_request(v2["direct (tokenizer)"])
        calls = {
            "tokenizer, direct": lambda: v2["direct (tokenizer)"].ModelInfer(tokenize),
            "tokenizer, gateway with HTTP on": lambda: v2["HTTP on"].ModelInfer(tokenize),
            "tokenizer, gateway with HTTP off": lambda: v2["HTTP off"].ModelInfer(tokenize),
            f"{MODEL}, direct": lambda: v2[f"direct ({MODEL})"].ModelInfer(model),
            f"{MODEL}, gateway with HTTP on": lambda: v2["HTTP on"].ModelInfer(model),
            f"{MODEL}, gateway with HTTP off": lambda: v2["HTTP off"].ModelInfer(model),
        }
        results = await interleaved(calls, config.duration, config.warmup)
        section.rows += [Row(label, result) for label, result in results.items()]
        loaded = await alternating(
            {label: call for label, call in calls.items() if label.startswith(f"{MODEL}, gateway")},
            CONCURRENCY,
            config.duration,
            config.warmup,
        )
        section.rows += [Row(label, result) for label, result in loaded.items()]

    def hop(model: str, state: str) -> float:
        return section.row(f"{model}, gateway with HTTP {state}", 1).p50_ms - section.row(f"{model}, direct", 1).p50_ms

    on, off = (section.row(f"{MODEL}, gateway with HTTP {state}", CONCURRENCY).throughput for state in ("on", "off"))
    section.findings = [
        f"The gateway hop (p50 through the gateway minus direct, concurrency 1) is {hop(MODEL, 'on'):.2f} ms with "
        f"HTTP on and {hop(MODEL, 'off'):.2f} ms with HTTP off on `{MODEL}`; {hop('tokenizer', 'on'):.2f} vs "
        f"{hop('tokenizer', 'off'):.2f} ms on `tokenizer`.",
        f"At concurrency {CONCURRENCY}, the gateway with HTTP on serves {on / off:.0%} of the requests of the one "
        f"with HTTP off on `{MODEL}` ({on:,.1f} vs {off:,.1f} req/s).",
    ]
    return section


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
    metrics_port = _free_port()
    async with AsyncExitStack() as stack:
        tokenizer, transformer, routing_file = await _backends(stack, config)
        gateway_env = {
            "MAAS_GATEWAY_ROUTING_FILE": str(routing_file),
            "MAAS_GATEWAY_METRICS_PORT": str(metrics_port),
            "MAAS_GATEWAY_HTTP_PORT": "0",
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
        model = await _model_request(tokenizer_v2)
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
