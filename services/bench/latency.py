"""Latency-target benchmark: open-loop Poisson load against a latency target, beside the best static
queue delay found by a sweep in the same run, and a step of load with its p99 and shed rate over time."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import math
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from maas.inference import grpc_service_pb2 as v2pb
from services.bench.loadgen import LoadResult, closed_loop, sequence_requests
from services.bench.report import Section, load_pyplot
from services.bench.settings import BenchConfig
from services.bench.transformer import SHORT_TOKENS, first_sentences
from services.cli.processes import running
from services.common.codec import Tensor, encode_inputs
from services.common.timing import TIMING_KEY, parse
from services.tokenizer.model import newest_tokenizer
from services.transformer.spec import EMBED_MODEL
from services.transformer.train import reviews
from services.vision.data import load_split
from services.vision.spec import MODEL_NAME as VISION_MODEL

LOADS = (0.5, 0.8, 1.2)
CAPACITY_CONCURRENCIES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
"""The closed loop's concurrencies swept (the most calls per second answered with a p99 within T), up to
the first whose p99 is over T: where the search for the open loop's capacity starts."""
CAPACITY_PROBES = 8
CAPACITY_START = 1.25
"""Capacity at T is searched in `CAPACITY_PROBES` open-loop probes of the targeted service, the first at
this many times the closed loop's rate: while the service keeps up (`PROBE_MISSED`), the rate doubles (the
targeted service may serve more than the closed loop's, as the native front does), while it has kept up
with none it halves; then bisection."""
PROBE_CALLS = 800
"""Calls an open-loop probe sends at least in all (so that its shares are not a few calls'), in at most
`PROBE_MAX_DURATIONS` x the bench's duration."""
PROBE_MAX_DURATIONS = 2.5
PROBE_PARTS = 3
PROBE_MISSED = 0.01
"""The most calls a probe may leave unanswered within T (refused or late), at the median of its
`PROBE_PARTS` loops (one stall of this shared machine does not decide the capacity), and still count as
kept up with: the share the latency target may shed at 80% of capacity."""
CLIENT_LAG_MS = 5.0
"""The most a probe within capacity may start its calls after their Poisson arrival times, at p99: past
it the bench's client, not the service, sets the pace (it has one core of the machine)."""
SERVER_CPUS = frozenset({0})
CLIENT_CPUS = frozenset({1})
"""The server runs on one core and the bench's client on the other, the nearest this machine comes to a
client on its own machine: on shared cores an open-loop client takes CPU from the server it measures, so
a share of the closed loop's capacity is not that share of what the server gets."""
WINDOW_S = 0.5
RATE_STEP_S = 0.001
"""How finely `arrivals` reads a rate that changes during the run."""
SETTLE_S = 2.0
CALL_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 10.0
OK_CODE = grpc.StatusCode.OK.value[0]
SHED_CODE = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
TIMING_METADATA = ((TIMING_KEY, "1"),)
CLIENT_NICE = -5
"""Scheduling priority of the bench's own threads while they measure: on two shared cores a caller
that waits for a core would count its own wait as the server's latency (a real caller runs elsewhere)."""
OUTSIDE_LOAD = 0.25
"""The share of the closed loop's best rate at which the time outside the service is measured: light load,
so that it is the network's and the client's time (the service's MAX_LATENCY_MS is T less it), not a
queue ahead of an overloaded server."""
OUTSIDE_CALLS = 200
"""Calls the loop measuring the time outside the service sends at least, so that its p99 is not one
call's (at a quarter of a slow model's rate, half the bench's duration holds only a few)."""
RPC_LIMIT_HEADROOM = 2.0
"""The targeted service's `MAX_CONCURRENT_RPCS` is this many times capacity x T (Little's law: the
calls in flight when capacity is served within T), so that past capacity the calls gRPC refuses before
any handler are the excess, not a burst below capacity."""
Call = Callable[..., object]


@dataclass(frozen=True)
class Outcome:
    """One open-loop call: when it was due (seconds into the run), how late the client started it, how
    long it took from then, how it ended."""

    sent: float
    lag: float
    seconds: float
    ok: bool
    shed: bool


@dataclass(frozen=True)
class Point:
    """What one open-loop run measured against a target of `target_ms`."""

    label: str
    rate: float
    seconds: float
    outcomes: list[Outcome]
    target_ms: float

    @property
    def served_p99_ms(self) -> float:
        """p99 of the calls answered."""
        served = [o.seconds for o in self.outcomes if o.ok]
        return float(np.percentile(served, 99) * 1000) if served else 0.0

    @property
    def client_lag_p99_ms(self) -> float:
        """p99 of how late the client started its calls (past `CLIENT_LAG_MS` it measures itself)."""
        return float(np.percentile([o.lag for o in self.outcomes], 99) * 1000) if self.outcomes else 0.0

    @property
    def shed(self) -> float:
        """Share of calls refused with RESOURCE_EXHAUSTED."""
        return sum(o.shed for o in self.outcomes) / max(1, len(self.outcomes))

    @property
    def failed(self) -> int:
        """Calls that failed otherwise."""
        return sum(not o.ok and not o.shed for o in self.outcomes)

    @property
    def goodput(self) -> float:
        """Calls answered within the target, per second."""
        return sum(o.ok and o.seconds * 1000 <= self.target_ms for o in self.outcomes) / self.seconds


@dataclass(frozen=True)
class Workload:
    """One model's requests, server and target."""

    model: str
    service: str
    requests: list[v2pb.ModelInferRequest]
    target: Callable[[float], float]
    target_rule: str
    front: str
    """The front of the targeted service (`MAAS_<SERVICE>_FRONT`); the static delays run on the Python
    front, whose batcher has the queue delay, and, where the targeted service's front is another, that
    front with no target is one of the static settings too (the native front never waits for batch
    mates: no queue delay)."""


def arrivals(rate_at: Callable[[float], float], seconds: float, seed: int = 0) -> np.ndarray:
    """Poisson arrival times at `rate_at(t)` calls per second for `seconds`, given their count: as many as
    the rate gives over the run (its integral, rounded), each placed independently with a density that
    follows the rate, which is how a Poisson process's arrivals fall once their number is known. So a
    run at a constant rate offers that rate exactly, in Poisson's bursts (left to chance, the count of a
    short run is off by several percent).

    Args:
        rate_at: calls per second at `t` seconds into the run (evaluated every `RATE_STEP_S`).
        seconds: how long.
        seed: the random seed: the same arguments give the same times.

    Returns:
        The arrival times, seconds into the run, in order.
    """
    edges = np.linspace(0.0, seconds, max(1, math.ceil(seconds / RATE_STEP_S)) + 1)
    expected = np.concatenate([[0.0], np.cumsum(np.array([rate_at(t) for t in edges[:-1]]) * np.diff(edges))])
    draws = np.random.default_rng(seed).uniform(0.0, expected[-1], round(expected[-1]))
    return np.interp(np.sort(draws), expected, edges)


async def _send(address: str, requests: list[bytes], due: np.ndarray, *timing: object):
    """`_openloop.run` on a worker thread: (lag ns, elapsed ns, codes, trailers) per arrival in `due`;
    `timing` is the `metadata, trailer` pair, if any."""
    try:
        from services.bench.native import _openloop
    except ImportError as exc:
        raise RuntimeError(f"the open-loop client is not built: run `make native` ({exc})") from None
    return await asyncio.to_thread(
        _openloop.run, address, MODEL_INFER, requests, due, CALL_TIMEOUT_S, CONNECT_TIMEOUT_S, *timing
    )


async def open_loop(
    address: str, requests: list[bytes], rate_at: Callable[[float], float], seconds: float, seed: int = 0
) -> list[Outcome]:
    """Poisson arrivals at `rate_at(t)` calls per second for `seconds`, whatever the answers, sent by the
    C++ client (services/bench/native/openloop.cc) on a channel of its own.

    Bounded in count (the arrivals of `seconds`) and in time (each call's `CALL_TIMEOUT_S`).

    Args:
        address: the service's `host:port`.
        requests: serialized `ModelInferRequest`s, sent in turn.
        rate_at: calls per second at `t` seconds into the run.
        seconds: how long.
        seed: the arrivals' random seed.

    Raises:
        RuntimeError: the client is not built (`make native`), or could not connect within
            `CONNECT_TIMEOUT_S`.
    """
    due = arrivals(rate_at, seconds, seed)
    lags, elapsed, codes, _ = await _send(address, requests, due)
    return [
        Outcome(float(sent), lag / 1e9, took / 1e9, code == OK_CODE, code == SHED_CODE)
        for sent, lag, took, code in zip(due, lags.tolist(), elapsed.tolist(), codes.tolist(), strict=True)
    ]


async def outside_p99_ms(address: str, requests: list[bytes], rate: float, seconds: float) -> float:
    """The p99 of the time the calls of a Poisson open loop spend outside the service: the C++ client's
    time less the `total_us` the service answered in `maas-timing` (its own time for the call).

    Args:
        address: the service's `host:port`.
        requests: serialized `ModelInferRequest`s, sent in turn, each asking for `maas-timing`.
        rate: calls per second.
        seconds: how long.

    Returns:
        Milliseconds, over the calls answered.

    Raises:
        RuntimeError: the client is not built (`make native`) or could not connect, no call was answered,
            or one was answered without `maas-timing`.
    """
    due = arrivals(lambda _t: rate, seconds)
    _, elapsed, codes, trailers = await _send(address, requests, due, TIMING_METADATA, TIMING_KEY)
    answered = [
        (took, trailer)
        for took, code, trailer in zip(elapsed.tolist(), codes.tolist(), trailers, strict=True)
        if code == OK_CODE
    ]
    if not answered or not all(trailer for _, trailer in answered):
        untimed = sum(not trailer for _, trailer in answered)
        raise RuntimeError(f"{address} answered {len(answered)} of {len(due)} calls, {untimed} without maas-timing")
    outside = [(took - int(parse(trailer.decode())["total_us"]) * 1000) / 1e6 for took, trailer in answered]
    return float(np.percentile(outside, 99))


def _env(workload: Workload, config: BenchConfig, **settings: float | str) -> dict[str, str]:
    prefix = f"MAAS_{workload.service.upper()}_"
    env = {"MAAS_MODEL_REPOSITORY": str(config.repository), f"{prefix}METRICS_PORT": "0"}
    return env | {f"{prefix}{key.upper()}": str(value) for key, value in settings.items()}


def _infer(channel: grpc.aio.Channel) -> Call:
    """`ModelInfer` on requests serialized once, answers left unparsed: the client's own work per call
    is kept small, since it shares the machine with the server it measures."""
    return channel.unary_unary(MODEL_INFER)


def separate_cores() -> bool:
    """Whether the server and the client can run on cores of their own (`SERVER_CPUS`, `CLIENT_CPUS`)."""
    return hasattr(os, "sched_setaffinity") and os.sched_getaffinity(0) >= SERVER_CPUS | CLIENT_CPUS


def _server_cpus() -> frozenset[int] | None:
    return SERVER_CPUS if separate_cores() else None


@contextlib.contextmanager
def ahead_of_servers() -> Iterator[bool]:
    """Run this process's threads on `CLIENT_CPUS` (where `separate_cores`) and at `CLIENT_NICE` for the
    block (servers started before keep theirs; threads started in the block inherit both and keep them),
    with the garbage collector off (its full passes over the calls' objects paused the client's loop by up
    to 100 ms, late sends counted as the server's latency); yields False, changing no priority, where
    raising one is not permitted."""
    gc.collect()
    gc.disable()
    threads = [int(tid) for tid in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else []
    before = {tid: os.getpriority(os.PRIO_PROCESS, tid) for tid in threads}
    cpus = {tid: os.sched_getaffinity(tid) for tid in threads} if separate_cores() else {}
    for tid in cpus:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, CLIENT_CPUS)
    try:
        for tid in threads:
            os.setpriority(os.PRIO_PROCESS, tid, CLIENT_NICE)
    except (PermissionError, ProcessLookupError):
        raised = False
    else:
        raised = bool(threads)
    try:
        yield raised
    finally:
        gc.enable()
        for tid, nice in before.items():
            with contextlib.suppress(PermissionError, ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        for tid, allowed in cpus.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, allowed)


async def _run(workload: Workload, config: BenchConfig, settings: dict[str, float | str], body: Callable):
    """Start the service with `settings`, warm it up, then return what `body(address, requests)` measures
    against it (`requests`: the workload's, serialized)."""
    requests = [r.SerializeToString() for r in workload.requests]
    async with (
        running(
            workload.service, "--port", "0", env=_env(workload, config, **settings), cpus=_server_cpus()
        ) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        call = _infer(channel)
        with ahead_of_servers():
            cycle = itertools.cycle(requests)
            await closed_loop(lambda: call(next(cycle)), 4, 0.5, 0.5)
            return await body(address, requests)


async def _open_loops(address: str, requests: list[bytes], points) -> list[list[Outcome]]:
    """Each (rate function, seconds) open loop in turn."""
    return [
        await open_loop(address, requests, rate_at, seconds, seed=index)
        for index, (rate_at, seconds) in enumerate(points)
    ]


@dataclass(frozen=True)
class Baseline:
    """What the no-delay server measured before the open loops: the target T, the most calls per second a
    closed loop had answered within T and the sweep behind it, the p99 of the calls' time outside the
    service's own (`outside_p99_ms`) at `OUTSIDE_LOAD` of that rate, and whether the client ran ahead of
    the server (`ahead_of_servers`)."""

    target_ms: float
    closed: float
    sweep: list[LoadResult]
    outside_ms: float
    ahead: bool


@dataclass(frozen=True)
class Probe:
    """One open-loop probe of capacity: `PROBE_PARTS` loops at one rate."""

    parts: tuple[Point, ...]

    @functools.cached_property
    def point(self) -> Point:
        """The parts as one run."""
        first = self.parts[0]
        outcomes = [o for part in self.parts for o in part.outcomes]
        return Point(first.label, first.rate, sum(p.seconds for p in self.parts), outcomes, first.target_ms)

    @property
    def valid(self) -> bool:
        """The client sent on time (`CLIENT_LAG_MS`, at the median part) and no call failed otherwise than
        refused: the probe measured the service. One that did not counts as not kept up with, and not
        towards the ceiling."""
        lag = float(np.median([p.client_lag_p99_ms for p in self.parts]))
        return lag <= CLIENT_LAG_MS and not self.point.failed

    @property
    def answered(self) -> bool:
        """A valid probe whose parts left at most `PROBE_MISSED` of their calls unanswered within T (refused
        or late), at the median part: the service kept up."""
        missed = [1 - p.goodput * p.seconds / max(1, len(p.outcomes)) for p in self.parts]
        return self.valid and float(np.median(missed)) <= PROBE_MISSED


def _next_rate(start: float, low: float, high: float) -> float:
    """The next probe's rate, given the highest rate the service kept up with (`low`, 0 if none) and the
    lowest it did not (`high`, infinite if none)."""
    if high == math.inf:
        return 2 * low if low else start
    return (low + high) / 2 if low else high / 2


async def search_capacity(
    probe: Callable[[float], Awaitable[Probe]], start: float, count: int = CAPACITY_PROBES
) -> tuple[float, float, list[Probe]]:
    """Capacity at T, the highest Poisson rate a service keeps up with (`Probe.answered`), over `count`
    probes of it: `start` first, doubled while it keeps up (halved while it has kept up with none), then
    bisection between the highest rate it kept up with and the lowest it did not; and its goodput
    ceiling, the most calls per second any valid probe had answered within T. A batching service has no
    sharp capacity: past the rate it keeps up with, its goodput still grows with the batches its queue
    allows, up to the ceiling.

    Args:
        probe: runs open loops at a rate (calls per second) and returns what they measured.
        start: the first rate.
        count: probes in all.

    Returns:
        (capacity, ceiling, the probes in order); the capacity is the lowest rate probed if the service
        kept up with none.
    """
    low, high, probes = 0.0, math.inf, []
    for _ in range(count):
        rate = _next_rate(start, low, high)
        probes.append(await probe(rate))
        if probes[-1].answered:
            low = rate
        else:
            high = rate
    ceiling = max((p.point.goodput for p in probes if p.valid), default=0.0)
    return (low or min(p.point.rate for p in probes)), ceiling, probes


async def _open_capacity(address: str, requests: list[bytes], closed: float, target_ms: float, duration: float):
    """`search_capacity` of the service at `address`, from `CAPACITY_START` x the closed loop's best rate
    `closed`, each probe `PROBE_CALLS` calls long in all (at least `duration`, at most `PROBE_MAX_DURATIONS` x
    it), in `PROBE_PARTS` loops, each loop with arrivals of its own."""

    seeds = itertools.count(100)

    async def probe(rate: float) -> Probe:
        seconds = min(PROBE_MAX_DURATIONS * duration, max(duration, PROBE_CALLS / rate)) / PROBE_PARTS
        parts = []
        for _ in range(PROBE_PARTS):
            outcomes = await open_loop(address, requests, lambda _t: rate, seconds, seed=next(seeds))
            parts.append(Point("probe", rate, seconds, outcomes, target_ms))
        return Probe(tuple(parts))

    return await search_capacity(probe, CAPACITY_START * closed)


async def _baseline(workload: Workload, config: BenchConfig) -> Baseline:
    """The model's served p50 at concurrency 1 (whence T), the most calls per second a closed loop had
    answered with a p99 within T, over `CAPACITY_CONCURRENCIES` up to the first over T (no queue delay),
    and the time the calls of an open loop at `OUTSIDE_LOAD` of that rate (`OUTSIDE_CALLS` at least) spent
    outside the service."""
    requests = [r.SerializeToString() for r in workload.requests]
    async with (
        running(
            workload.service, "--port", "0", env=_env(workload, config, max_queue_delay_ms=0), cpus=_server_cpus()
        ) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        call = _infer(channel)
        cycle = itertools.cycle(requests)
        with ahead_of_servers() as ahead:
            alone = await closed_loop(lambda: call(next(cycle)), 1, config.duration, config.warmup)
            target = workload.target(alone.p50_ms)
            sweep = []
            for concurrency in CAPACITY_CONCURRENCIES:
                sweep.append(await closed_loop(lambda: call(next(cycle)), concurrency, config.duration / 2, 0.2))
                if sweep[-1].p99_ms > target:
                    break
            within = [point for point in sweep if point.p99_ms <= target] or sweep[:1]
            closed = max(point.throughput for point in within)
            rate = OUTSIDE_LOAD * closed
            outside = await outside_p99_ms(address, requests, rate, max(config.duration / 2, OUTSIDE_CALLS / rate))
    return Baseline(target, closed, sweep, outside, ahead)


def _windows(outcomes: list[Outcome], seconds: float) -> list[tuple[float, float, float]]:
    """(window start, p99 ms of the calls answered, shed share) per `WINDOW_S`, by sending time."""
    rows = []
    for start in np.arange(0, seconds, WINDOW_S):
        inside = [o for o in outcomes if start <= o.sent < start + WINDOW_S]
        served = [o.seconds * 1000 for o in inside if o.ok]
        shed = sum(o.shed for o in inside) / max(1, len(inside))
        rows.append((float(start), float(np.percentile(served, 99)) if served else 0.0, shed))
    return rows


def _settling(sent: float, changes: list[float]) -> bool:
    """Whether a call sent at `sent` (seconds into the step) falls in the `SETTLE_S` after a change of load."""
    return any(change <= sent < change + SETTLE_S for change in changes)


def _plot(path: Path, steps: dict[str, tuple[list[tuple[float, float, float]], float, list[float]]]) -> None:
    pyplot = load_pyplot()
    figure, axes = pyplot.subplots(len(steps), 1, figsize=(8, 3.2 * len(steps)), squeeze=False)
    for axis, (model, (windows, target, changes)) in zip(axes[:, 0], steps.items(), strict=True):
        times = [w[0] + WINDOW_S / 2 for w in windows]
        axis.plot(times, [w[1] for w in windows], label="served p99 (ms)", color="tab:blue")
        axis.axhline(target, color="tab:blue", linestyle="--", linewidth=1, label=f"target {target:.1f} ms")
        for change in changes:
            axis.axvline(change, color="grey", linewidth=0.8)
        axis.set_ylabel("ms")
        axis.set_title(f"{model}: step 50% → 120% → 50% of capacity")
        shed = axis.twinx()
        shed.plot(times, [w[2] * 100 for w in windows], color="tab:red", label="shed (%)")
        shed.set_ylabel("shed %")
        shed.set_ylim(0, 100)
        lines = axis.get_legend_handles_labels()[0] + shed.get_legend_handles_labels()[0]
        axis.legend(lines, [line.get_label() for line in lines], loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot.close(figure)


def _workloads(config: BenchConfig) -> list[Workload]:
    images, _ = load_split("test")
    image_requests = []
    for image in images[:64]:
        request = v2pb.ModelInferRequest(model_name=VISION_MODEL)
        encode_inputs(request, [Tensor("IMAGE", "FP32", np.ascontiguousarray(image[None]))])
        image_requests.append(request)
    texts, _ = reviews("testing_data")
    tokenizer = newest_tokenizer(config.repository)
    ids, mask, _ = tokenizer.encode_arrays(first_sentences(texts, tokenizer, SHORT_TOKENS)[:256])
    short = sequence_requests(EMBED_MODEL, ids, mask)
    return [
        Workload(VISION_MODEL, "vision", image_requests, lambda _p50: 10.0, "10 ms", "native"),
        Workload(EMBED_MODEL, "transformer", short, lambda p50: 4 * p50, "4x c1 p50", "python"),
    ]


def _probe_text(probe: Probe) -> str:
    point = probe.point
    verdict = "kept up" if probe.answered else "not kept up" if probe.valid else "client late or a call failed"
    return (
        f"{point.rate:,.0f}/s offered, {point.goodput:,.0f}/s within T, p99 {point.served_p99_ms:.1f} ms, shed "
        f"{point.shed:.1%}, client lag p99 {point.client_lag_p99_ms:.2f} ms, {verdict}"
    )


def _ceiling_text(capacity: float, ceiling: float, probes: list[Probe]) -> str:
    kept = "" if any(p.answered for p in probes) else "kept up with no rate probed (capacity: the lowest); "
    if not ceiling:
        return kept + "no probe counted towards a goodput ceiling"
    return kept + f"goodput ceiling {ceiling:,.0f} req/s, {ceiling / capacity:.0%} of capacity"


async def latency_section(config: BenchConfig) -> Section:
    """Open-loop load against a latency target, beside the best static queue delay, and a load step."""
    seconds = config.duration * 2
    section = Section(
        title="Latency target (open loop)",
        note=(
            "Open loop: Poisson arrivals, whatever the answers (as many as the rate gives: each load point offers "
            "exactly its rate, and the step its total), at a share of the capacity at T measured just "
            "before in the same run: the highest Poisson rate the targeted service kept up with, leaving at most "
            f"{PROBE_MISSED:.0%} of the calls unanswered within T (refused or late; the median of {PROBE_PARTS} "
            f"loops per probe), in {CAPACITY_PROBES} probes of {PROBE_CALLS} calls ({config.duration:g} s at the "
            f"least, {PROBE_MAX_DURATIONS * config.duration:g} s at the most), the first at {CAPACITY_START:g} x the "
            "most calls per second a closed loop had answered within T, doubled while the service kept up (halved "
            "while it had kept up with none), then bisection. Its goodput ceiling is the most calls per second a "
            "probe had answered within T: a batching service has no sharp capacity, and past the rate it keeps up "
            "with its goodput still grows with its batches. A probe where the client did not start 99% of its "
            f"calls within {CLIENT_LAG_MS:g} ms of their arrival times (at the median loop), or a call failed "
            "otherwise than refused, counts as not kept up with and not towards the ceiling. The closed loop had "
            "no queue delay, concurrency "
            f"{', '.join(map(str, CAPACITY_CONCURRENCIES))} up to the first over T, "
            f"{config.duration / 2:g} s each. "
            "A closed loop of a few callers never has more "
            "calls queued than callers; Poisson arrivals come in bursts, so the rate a closed loop serves within "
            "T, sent open, is served later. The probes, then the loads and the step, run in one process; one "
            f"process per static delay. Grpc hosting, {seconds:g} s per point. "
            + (
                f"The server runs on CPU {min(SERVER_CPUS)} only and the bench's client on CPU {min(CLIENT_CPUS)} "
                "only (thread affinity), the nearest this machine comes to a client on its own machine: on shared "
                "cores the open-loop client takes CPU from the server it measures. "
                if separate_cores()
                else "Client and server share the machine's cores (fewer than two here to separate them). "
            )
            + "fashion_cnn: one test image per request, "
            "T = 10 ms, the targeted service on the native front (docs/native-front.md; its routes hold the "
            "target in C++, on the batch cost its pumps fit), the static delays and the capacity sweep on the "
            "Python front, and the native front with no target (it never waits for batch mates) as one more "
            "static setting. minilm_embed (Python front throughout): short texts (first sentences of reviews, at most "
            f"{SHORT_TOKENS} tokens), T = 4x its served p50 at concurrency 1. The service's MAX_LATENCY_MS is T "
            "less the p99 of the calls' time outside the service (the C++ client's time less the `total_us` the "
            f"service answered in `maas-timing`, in an open loop at {OUTSIDE_LOAD:g} x the closed loop's best rate on "
            "the no-delay server, light load: the network's and the client's time), since the service holds only "
            "its own time to the target; its MAX_CONCURRENT_RPCS is "
            f"{RPC_LIMIT_HEADROOM:g} x the closed loop's best rate x T. The open loops are sent by a C++ client "
            "(services/bench/native/openloop.cc: one thread sends requests serialized once at their arrival times, "
            "one collects the answers, on one HTTP/2 connection); the closed loops by the Python one. The client "
            f"runs its threads at nice {CLIENT_NICE} while it measures (servers at 0) and its garbage collector off, "
            "so that its own waits are not counted as the server's. Static: MAX_QUEUE_DELAY_MS swept over "
            f"{', '.join(f'{d:g}' for d in config.static_delays_ms)} ms at 120%; the best is the one with the most "
            "goodput (calls answered within T per second). Step: 50% → 120% → 50%, "
            f"{seconds:g} s each; p99 and shed share per {WINDOW_S:g} s window of sending time in the PNG."
        ),
    )
    lines = [
        "| model | T ms | load | mode | offered/s | served p99 ms | shed % | goodput/s | failed | client lag p99 ms |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    steps = {}
    for workload in _workloads(config):
        baseline = await _baseline(workload, config)
        target = baseline.target_ms
        budget = max(0.5, target - baseline.outside_ms)
        rpc_limit = math.ceil(RPC_LIMIT_HEADROOM * baseline.closed * target / 1000)

        async def targeted_runs(
            address: str, requests: list[bytes], target: float = target, closed: float = baseline.closed
        ):
            capacity, ceiling, probes = await _open_capacity(address, requests, closed, target, config.duration)
            plan = [(lambda _t, r=load * capacity: r, seconds) for load in LOADS]

            def step_rate(t: float, full: float = capacity) -> float:
                return full * (1.2 if seconds <= t < 2 * seconds else 0.5)

            plan.append((step_rate, 3 * seconds))
            return capacity, ceiling, probes, await _open_loops(address, requests, plan)

        capacity, ceiling, probes, (*targeted, step) = await _run(
            workload,
            config,
            {"max_latency_ms": round(budget, 2), "max_concurrent_rpcs": rpc_limit, "front": workload.front},
            targeted_runs,
        )
        points: dict[tuple[str, float], Point] = {}
        statics = [(f"static {delay:g} ms", {"max_queue_delay_ms": delay}) for delay in config.static_delays_ms]
        if workload.front != "python":
            statics.append((f"{workload.front} front, no target", {"front": workload.front}))
        for index, (label, settings) in enumerate(statics):
            [outcomes] = await _run(
                workload,
                config,
                settings,
                functools.partial(_open_loops, points=[(lambda _t, r=1.2 * capacity: r, seconds)]),
            )
            points["static", index] = Point(label, 1.2 * capacity, seconds, outcomes, target)
        best = max((p for (mode, _), p in points.items() if mode == "static"), key=lambda p: p.goodput)
        for load, outcomes in zip(LOADS, targeted, strict=True):
            points["target", load] = Point(f"target {target:.1f} ms", load * capacity, seconds, outcomes, target)
        for (mode, key), point in points.items():
            if mode == "static" and point is not best:
                continue
            load = "120%" if mode == "static" else f"{key:.0%}"
            name = f"best static ({point.label})" if mode == "static" else "latency target"
            lines.append(
                f"| {workload.model} | {target:.1f} | {load} | {name} | {point.rate:,.0f} | {point.served_p99_ms:.2f} "
                f"| {point.shed:.1%} | {point.goodput:,.0f} | {point.failed} | {point.client_lag_p99_ms:.2f} |"
            )
        changes = [seconds, 2 * seconds]
        windows = _windows(step, 3 * seconds)
        steps[workload.model] = (windows, target, changes)
        outside = [w for w in windows if not _settling(w[0], changes)]
        over = max((w[1] for w in outside), default=0.0)
        settled_outcomes = [o for o in step if not _settling(o.sent, changes)]
        settled = Point("step", 0.0, 3 * seconds - len(changes) * SETTLE_S, settled_outcomes, target)
        high = points["target", 1.2]
        section.findings += [
            f"{workload.model} (capacity {capacity:,.0f} req/s, T = {workload.target_rule} = {target:.1f} ms, "
            f"outside the service {baseline.outside_ms:.2f} ms at p99, MAX_LATENCY_MS {budget:.2f}, "
            f"MAX_CONCURRENT_RPCS {rpc_limit}"
            f"{'' if baseline.ahead else ', the client could not raise its priority'}; capacity sweep, "
            "concurrency: req/s at p99 ms = "
            + ", ".join(f"{p.concurrency}: {p.throughput:,.0f} at {p.p99_ms:.1f}" for p in baseline.sweep)
            + "; open-loop probes of the targeted service: "
            + "; ".join(map(_probe_text, probes))
            + "; "
            + _ceiling_text(capacity, ceiling, probes)
            + "): served p99 at 50/80/120% = "
            + "/".join(f"{points['target', load].served_p99_ms:.2f}" for load in LOADS)
            + " ms, shed "
            + "/".join(f"{points['target', load].shed:.1%}" for load in LOADS)
            + f"; at 120% the calls beyond capacity are {1 - 1 / 1.2:.1%} of those offered"
            + (f" and those beyond the ceiling {max(0.0, 1 - ceiling / high.rate):.1%}" if ceiling else "")
            + (
                f"; goodput is {high.goodput / best.goodput:.0%} of the best static setting's"
                if best.goodput
                else "; the best static setting answered nothing within T"
            )
            + f" ({best.label}: {best.goodput:,.0f}/s, p99 {best.served_p99_ms:.2f} ms).",
            f"{workload.model} step, the calls sent outside the {SETTLE_S:g} s after each change: served p99 "
            f"{settled.served_p99_ms:.2f} ms (T {target:.1f} ms), shed {settled.shed:.1%}; the worst p99 of a "
            f"{WINDOW_S:g} s window among them {over:.2f} ms.",
        ]
    section.table = lines
    section.figure = functools.partial(_plot, steps=steps)
    section.caption = "the step's p99 and shed rate over time"
    return section
