"""Closed-loop v2 callers run in child processes (so that many callers are not one Python event loop's
work), and what a refused caller does before its next call."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable

import grpc

from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from services.bench.loadgen import callers

FIRST_BACKOFF_SECONDS = 0.05
MAX_BACKOFF_SECONDS = 1.0
FIXED_BACKOFF_SECONDS = 0.1
JITTER = random.Random(17)


def exponential_backoff(refusals: int) -> float:
    """What a client with the usual retry policy waits after `refusals` refusals in a row: 50 ms doubling
    to 1 s, each wait between half and one and a half times that."""
    return min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** (refusals - 1)) * JITTER.uniform(0.5, 1.5)


POLICIES: dict[str, Callable[[int], float]] = {
    "refused callers back off (50 ms doubling to 1 s)": exponential_backoff,
    f"refused callers wait {FIXED_BACKOFF_SECONDS * 1000:.0f} ms": lambda refusals: FIXED_BACKOFF_SECONDS,
    "refused callers retry at once": lambda refusals: 0.0,
}
"""How refused callers behave: as a client with a retry policy, with a fixed pause, or hammering."""


def hold_a_worker() -> None:
    """Keep one pool process busy for a moment, so that a round of these starts every process."""
    time.sleep(0.5)


def caller_process(
    index: int,
    address: str,
    requests: list[bytes],
    concurrency: int,
    start_at: float,
    warmup: float,
    duration: float,
    policy: str,
) -> tuple[list[float], list[float], int, float]:
    """One process's share of the callers (run in a child process): from the wall-clock time `start_at`,
    `warmup` seconds not measured, then `duration` seconds; latencies of answered and refused calls."""
    JITTER.seed(17 + index)
    return asyncio.run(_callers_here(address, requests, concurrency, start_at, warmup, duration, policy))


async def _callers_here(
    address: str, requests: list[bytes], concurrency: int, start_at: float, warmup: float, duration: float, policy: str
) -> tuple[list[float], list[float], int, float]:
    backoff = POLICIES[policy]

    def refused(exc: Exception) -> bool:
        return isinstance(exc, grpc.aio.AioRpcError) and exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

    async with grpc.aio.insecure_channel(address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        cycle = itertools.cycle([v2pb.ModelInferRequest.FromString(r) for r in requests])
        await stub.ServerReady(v2pb.ServerReadyRequest(), timeout=30)
        await asyncio.sleep(max(0.0, start_at - time.time()))

        def call() -> Awaitable[object]:
            return stub.ModelInfer(next(cycle), timeout=30)

        if warmup > 0:
            await callers(call, concurrency, warmup, refused=refused, backoff=backoff)
        phase = await callers(call, concurrency, duration, refused=refused, backoff=backoff)
    return phase.answered, phase.refused, phase.failed, phase.seconds
