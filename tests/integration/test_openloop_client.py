"""The latency bench's open-loop client (services/bench/native/openloop.cc) against a real gRPC server on
a loopback port: one call per arrival, sent whatever the answers, each with its own status."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from services.bench import latency
from services.bench.native import _openloop

SLOW_S = 0.3
STALL_S = 1.0


@dataclass
class Seen:
    """What the server saw: the requests' bytes and their arrival times (monotonic seconds) in order of
    arrival, how many asked for `maas-timing`, and the most calls in flight at once."""

    requests: list[bytes]
    arrived: list[float] = field(default_factory=list)
    in_flight: int = 0
    most: int = 0
    timing_asked: int = 0


async def _serve(seen: Seen, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    seen.requests.append(request)
    seen.arrived.append(time.monotonic())
    seen.timing_asked += (latency.TIMING_KEY, "1") in context.invocation_metadata()
    seen.in_flight += 1
    seen.most = max(seen.most, seen.in_flight)
    try:
        if request == b"refuse":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
        if request == b"slow":
            await asyncio.sleep(SLOW_S)
        if request == b"stall":
            await asyncio.sleep(STALL_S)
        if request.startswith(b"own "):
            took_us, claimed_us = request.decode().split()[1:]
            await asyncio.sleep(int(took_us) / 1e6)
            context.set_trailing_metadata(
                ((latency.TIMING_KEY, "hop=earlier;total_us=1"), (latency.TIMING_KEY, f"hop=m;total_us={claimed_us}"))
            )
        return request
    finally:
        seen.in_flight -= 1


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Seen]]:
    """A gRPC server answering `ModelInfer` with the request's bytes, or refusing, by what they say."""
    seen = Seen([])
    service, method = latency.MODEL_INFER.strip("/").split("/")

    async def serve(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await _serve(seen, request, context)

    handler = grpc.unary_unary_rpc_method_handler(serve)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {method: handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", seen
    finally:
        await server.stop(0)


def test_arrivals_follow_the_rate_and_stop_at_the_end():
    due = latency.arrivals(lambda t: 100.0 if t < 1.0 else 2000.0, 2.0, seed=3)
    assert np.all(np.diff(due) > 0) and due[0] > 0 and due[-1] < 2.0
    assert len(due) == 100 + 2000, "the run offers its rate exactly"
    assert np.count_nonzero(due >= 1.0) > 5 * np.count_nonzero(due < 1.0)
    assert np.array_equal(due, latency.arrivals(lambda t: 100.0 if t < 1.0 else 2000.0, 2.0, seed=3))


async def test_every_arrival_is_one_call_ending_with_its_own_status(server):
    address, seen = server
    rate = lambda _t: 400.0  # noqa: E731
    outcomes = await latency.open_loop(address, [b"fine", b"refuse"], rate, 0.25, seed=1)
    due = latency.arrivals(rate, 0.25, seed=1)
    assert len(outcomes) == len(due) == len(seen.requests) > 20
    assert [o.sent for o in outcomes] == due.tolist()
    assert [(o.ok, o.shed) for o in outcomes] == [(True, False), (False, True)] * (len(due) // 2) + [(True, False)] * (
        len(due) % 2
    )
    assert sorted(seen.requests) == sorted([b"fine", b"refuse"] * (len(due) // 2) + [b"fine"] * (len(due) % 2))
    assert all(o.seconds > 0 and o.lag >= 0 for o in outcomes)


async def test_calls_are_sent_at_their_arrival_times(server):
    address, seen = server
    due = np.array([0.0, 0.15, 0.2, 0.5])
    lags, _, codes, _ = await asyncio.to_thread(_openloop.run, address, latency.MODEL_INFER, [b"fine"], due, 5.0, 5.0)
    assert codes.tolist() == [0] * 4
    assert np.diff(seen.arrived) == pytest.approx(np.diff(due), abs=0.03)
    assert np.all(lags < 0.03e9)


async def test_calls_are_sent_whatever_the_answers(server):
    address, seen = server
    due = np.linspace(0.0, 0.1, 20)
    lags, elapsed, codes, trailers = await asyncio.to_thread(
        _openloop.run, address, latency.MODEL_INFER, [b"slow"], due, 5.0, 5.0
    )
    assert trailers == [b""] * 20
    assert seen.most == 20
    assert codes.tolist() == [0] * 20
    assert np.all(elapsed >= SLOW_S * 1e9)
    assert lags.shape == (20,) and np.all(lags >= 0)


async def test_a_call_past_its_deadline_ends_with_deadline_exceeded(server):
    address, _ = server
    _, elapsed, codes, _ = await asyncio.to_thread(
        _openloop.run, address, latency.MODEL_INFER, [b"stall", b"fine"], np.array([0.0, 0.01]), 0.2, 5.0
    )
    assert codes.tolist() == [grpc.StatusCode.DEADLINE_EXCEEDED.value[0], 0]
    assert 0.2e9 <= elapsed[0] < STALL_S * 1e9


async def test_metadata_goes_with_every_call_and_the_last_trailer_value_comes_back(server):
    address, seen = server
    _, elapsed, codes, trailers = await asyncio.to_thread(
        _openloop.run,
        address,
        latency.MODEL_INFER,
        [b"own 20000 20000", b"fine"],
        np.array([0.0, 0.01, 0.02]),
        5.0,
        5.0,
        latency.TIMING_METADATA,
        latency.TIMING_KEY,
    )
    assert codes.tolist() == [0, 0, 0]
    assert trailers == [b"hop=m;total_us=20000", b"", b"hop=m;total_us=20000"]
    assert seen.timing_asked == 3
    assert elapsed[0] >= 20e6


async def test_the_time_outside_the_service_is_the_callers_time_less_what_the_service_answered(server):
    address, _ = server
    assert 0 <= await latency.outside_p99_ms(address, [b"own 30000 30000"], 40.0, 0.5) < 20
    assert await latency.outside_p99_ms(address, [b"own 30000 0"], 40.0, 0.5) >= 30
    with pytest.raises(RuntimeError, match=r"answered (\d+) of \1 calls, [1-9]\d* without maas-timing"):
        await latency.outside_p99_ms(address, [b"own 1000 1000", b"fine"], 40.0, 0.5)
    with pytest.raises(RuntimeError, match="answered 0 of"):
        await latency.outside_p99_ms(address, [b"refuse"], 40.0, 0.5)


def test_bad_arrivals_no_requests_and_an_unreachable_server_are_refused():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"
    with pytest.raises(ValueError, match="in order"):
        _openloop.run(address, latency.MODEL_INFER, [b"x"], np.array([0.2, 0.1]), 1.0, 1.0)
    with pytest.raises(ValueError, match="no requests"):
        _openloop.run(address, latency.MODEL_INFER, [], np.array([0.0]), 1.0, 1.0)
    with pytest.raises(RuntimeError, match="could not connect"):
        _openloop.run(address, latency.MODEL_INFER, [b"x"], np.array([0.0]), 1.0, 0.2)
