"""A closed-loop load generator: N callers, each sending its next request when the last returns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from maas.inference import grpc_service_pb2 as v2pb
from services.common.codec import Tensor, encode_inputs


@dataclass(frozen=True)
class LoadResult:
    """What one load point measured. Latencies are in milliseconds."""

    concurrency: int
    completed: int
    failed: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        """Completed calls per second."""
        return self.completed / self.seconds if self.seconds else 0.0


def summarize(concurrency: int, latencies: list[float], failed: int, seconds: float) -> LoadResult:
    """Build a LoadResult from per-call latencies in seconds."""
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return LoadResult(concurrency, len(latencies), failed, seconds, float(p50), float(p95), float(p99))


@dataclass
class Phase:
    """What closed-loop callers measured over one phase: latencies in seconds of the answered calls and
    of the refused ones, the other failures, and the seconds the phase took."""

    answered: list[float]
    refused: list[float]
    failed: int
    seconds: float


async def callers(
    call: Callable[[], Awaitable[object]],
    concurrency: int,
    seconds: float,
    max_calls: int = 1_000_000,
    refused: Callable[[Exception], bool] = lambda exc: False,
    backoff: Callable[[int], float] = lambda refusals: 0.0,
) -> Phase:
    """Run `concurrency` callers, each sending its next call when the last returns, for `seconds` or
    `max_calls` calls in all.

    Args:
        call: makes one request; an exception is a refused call if `refused` says so, else a failure.
        concurrency: callers running at once.
        seconds: how long.
        max_calls: most calls in all.
        refused: which exceptions are refusals (timed apart from answered calls).
        backoff: seconds a caller waits after a refusal before its next call, given how many times in a
            row it was refused.
    """
    phase = Phase([], [], 0, 0.0)
    started = time.perf_counter()
    deadline = started + seconds

    async def caller() -> None:
        in_a_row = 0
        while time.perf_counter() < deadline and len(phase.answered) + len(phase.refused) + phase.failed < max_calls:
            t0 = time.perf_counter()
            try:
                await call()
            except Exception as exc:
                if not refused(exc):
                    phase.failed += 1
                    continue
                phase.refused.append(time.perf_counter() - t0)
                in_a_row += 1
                await asyncio.sleep(backoff(in_a_row))
                continue
            in_a_row = 0
            phase.answered.append(time.perf_counter() - t0)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - started
    return phase


async def closed_loop(
    call: Callable[[], Awaitable[object]],
    concurrency: int,
    duration: float,
    warmup: float,
    max_calls: int = 1_000_000,
) -> LoadResult:
    """Run `concurrency` callers for `warmup` seconds (not measured), then `duration` seconds.

    Bounded in time and in count: each phase ends at its deadline or after `max_calls` calls.

    Args:
        call: makes one request; an exception counts as a failed call.
        concurrency: callers running at once.
        duration: measured seconds.
        warmup: seconds run first and discarded.
        max_calls: most calls per phase.

    Returns:
        Throughput and latency percentiles of the measured phase.
    """
    if warmup > 0:
        await callers(call, concurrency, warmup, max_calls)
    phase = await callers(call, concurrency, duration, max_calls)
    return summarize(concurrency, phase.answered, phase.failed, phase.seconds)


def in_process(fn: Callable[[], object], duration: float, warmup: float, max_calls: int = 1_000_000) -> LoadResult:
    """Call `fn` back to back on this thread: the no-serving baseline (concurrency 1)."""

    def phase(seconds: float) -> tuple[list[float], float]:
        latencies: list[float] = []
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline and len(latencies) < max_calls:
            t0 = time.perf_counter()
            fn()
            latencies.append(time.perf_counter() - t0)
        return latencies, time.perf_counter() - started

    phase(warmup)
    latencies, elapsed = phase(duration)
    return summarize(1, latencies, 0, elapsed)


async def interleaved(
    calls: dict[str, Callable[[], Awaitable[object]]], duration: float, warmup: float, max_rounds: int = 1_000_000
) -> dict[str, LoadResult]:
    """One caller alternating between `calls` (concurrency 1), so every call sees the same machine.

    On a shared, noisy machine, measuring one call for seconds and then the other lets drift between
    the two periods pass for a difference between them; alternating call by call does not.

    Returns:
        Label -> its calls' throughput (as if each had the whole time) and latency percentiles.
    """

    async def phase(seconds: float) -> tuple[dict[str, list[float]], dict[str, int], float]:
        latencies: dict[str, list[float]] = {label: [] for label in calls}
        failed = dict.fromkeys(calls, 0)
        started = time.perf_counter()
        deadline = started + seconds
        rounds = 0
        while time.perf_counter() < deadline and rounds < max_rounds:
            rounds += 1
            for label, call in calls.items():
                t0 = time.perf_counter()
                try:
                    await call()
                except Exception:
                    failed[label] += 1
                    continue
                latencies[label].append(time.perf_counter() - t0)
        return latencies, failed, time.perf_counter() - started

    if warmup > 0:
        await phase(warmup)
    latencies, failed, elapsed = await phase(duration)
    return {label: summarize(1, latencies[label], failed[label], sum(latencies[label]) or elapsed) for label in calls}


async def alternating(
    calls: dict[str, Callable[[], Awaitable[object]]],
    concurrency: int,
    duration: float,
    warmup: float,
    rounds: int = 4,
) -> dict[str, LoadResult]:
    """Closed loops at `concurrency` taking turns: each round runs every call for `duration / rounds`
    seconds, so slow drift of a shared machine falls on every call alike (concurrency > 1's answer to
    `interleaved`).

    Returns:
        Label -> throughput and latency percentiles over all its rounds.
    """
    latencies: dict[str, list[float]] = {label: [] for label in calls}
    failed = dict.fromkeys(calls, 0)
    seconds = dict.fromkeys(calls, 0.0)

    async def window(call: Callable[[], Awaitable[object]], length: float, into: list[float]) -> tuple[int, float]:
        errors = 0
        started = time.perf_counter()
        deadline = started + length

        async def caller() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    await call()
                except Exception:
                    errors += 1
                    continue
                into.append(time.perf_counter() - t0)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return errors, time.perf_counter() - started

    for call in calls.values():
        if warmup > 0:
            await window(call, warmup, [])
    for _ in range(rounds):
        for label, call in calls.items():
            errors, elapsed = await window(call, duration / rounds, latencies[label])
            failed[label] += errors
            seconds[label] += elapsed
    return {label: summarize(concurrency, latencies[label], failed[label], seconds[label]) for label in calls}


def sequence_requests(model: str, ids: np.ndarray, mask: np.ndarray, version: str = "") -> list[v2pb.ModelInferRequest]:
    """One v2 request per row of `ids`, each at its own length (as a tokenizer returns it)."""
    requests = []
    for row in range(len(ids)):
        length = int(mask[row].sum())
        request = v2pb.ModelInferRequest(model_name=model, model_version=version)
        encode_inputs(
            request,
            [
                Tensor("INPUT_IDS", "INT64", ids[row : row + 1, :length]),
                Tensor("ATTENTION_MASK", "INT64", mask[row : row + 1, :length]),
            ],
        )
        requests.append(request)
    return requests
