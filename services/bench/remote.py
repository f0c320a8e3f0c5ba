"""`maas bench --address A`: closed-loop load against a running gateway (a deployed stack), with TLS
and an API key if it needs them; a table on stdout instead of the report."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from maas.gateway.v1 import gateway_pb2 as pb
from maas.gateway.v1 import gateway_pb2_grpc
from services.bench.loadgen import closed_loop
from services.bench.report import Row
from services.bench.settings import BenchConfig
from services.common.tls import ClientTls, aio_channel

SENTENCE = "Great taffy at a great price."
CALL_TIMEOUT_SECONDS = 30.0


async def remote_bench(address: str, tls: ClientTls, metadata: tuple[tuple[str, str], ...], config: BenchConfig) -> str:
    """Measure the gateway at `address` at every concurrency of `config`: Embed and ClassifyText
    (both text models) of one sentence.

    Args:
        address: the gateway's address.
        tls: TLS files to dial with (none: plaintext).
        metadata: sent with every call (the API key).
        config: load points and timings.

    Returns:
        A markdown table, one row per call and concurrency; a refused call counts as failed.
    """
    async with aio_channel(address, tls) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "Embed": lambda: stub.Embed(
                pb.EmbedRequest(texts=[SENTENCE]), timeout=CALL_TIMEOUT_SECONDS, metadata=metadata
            ),
            **{
                f"ClassifyText ({name})": lambda model=model: stub.ClassifyText(
                    pb.ClassifyTextRequest(texts=[SENTENCE], model=model),
                    timeout=CALL_TIMEOUT_SECONDS,
                    metadata=metadata,
                )
                for name, model in (("transformer", pb.TEXT_MODEL_TRANSFORMER), ("lstm", pb.TEXT_MODEL_LSTM))
            },
        }
        rows = [
            Row(label, await closed_loop(call, concurrency, config.duration, config.warmup))
            for label, call in calls.items()
            for concurrency in config.concurrencies
        ]
    lines = [
        f"gateway {address}{' (TLS)' if tls.enabled else ''}",
        "",
        "| call | concurrency | req/s | p50 ms | p95 ms | p99 ms | failed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        r = row.result
        lines.append(
            f"| {row.label} | {r.concurrency} | {r.throughput:,.0f} | {r.p50_ms:.2f} | {r.p95_ms:.2f} "
            f"| {r.p99_ms:.2f} | {r.failed} |"
        )
    return "\n".join(lines) + "\n"
