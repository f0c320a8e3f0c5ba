"""The latency bench's capacity search (services/bench/latency.py) on services whose goodput at each rate is
known: capacity is the most a service answers within T, whatever it is offered past it."""

import asyncio
from collections.abc import Callable

import pytest

from services.bench.latency import CAPACITY_PROBES, CLIENT_LAG_MS, Outcome, Point, search_capacity

TARGET_MS = 10.0
SECONDS = 4.0


def answering(goodput: Callable[[float], float], lag_ms: Callable[[float], float] = lambda _rate: 0.5):
    """A probe of a service that, offered `rate` calls per second, answers `goodput(rate)` of them within
    T and refuses the rest, with the client `lag_ms(rate)` late; and the rates it was probed at."""
    rates = []

    async def probe(rate: float) -> Point:
        rates.append(rate)
        calls, served = round(rate * SECONDS), round(min(rate, goodput(rate)) * SECONDS)
        outcomes = [
            Outcome(sent=i / rate, lag=lag_ms(rate) / 1000, seconds=0.002, ok=i < served, shed=i >= served)
            for i in range(calls)
        ]
        return Point("probe", rate, SECONDS, outcomes, TARGET_MS)

    return probe, rates


def test_a_service_that_holds_its_goodput_past_capacity_has_that_goodput_as_its_capacity():
    probe, rates = answering(lambda rate: min(rate, 140.0))
    capacity, probes = asyncio.run(search_capacity(probe, 200.0))
    assert capacity == pytest.approx(140.0, rel=0.01)
    assert len(probes) == CAPACITY_PROBES == len(rates)
    assert rates[:2] == [200.0, 100.0]
    assert all(p.answered for p in probes if p.point.rate <= 140.0)
    assert not any(p.answered for p in probes if p.point.rate > 141.5)


def test_the_search_doubles_past_the_first_rate_and_finds_a_peak_that_falls_off_past_it():
    probe, rates = answering(lambda rate: rate if rate <= 18_000 else max(0.0, 18_000 - 2 * (rate - 18_000)))
    capacity, _ = asyncio.run(search_capacity(probe, 2_000.0))
    assert rates[:5] == [2_000.0, 4_000.0, 8_000.0, 16_000.0, 32_000.0]
    assert 0.95 * 18_000 <= capacity <= 18_000


def test_a_probe_the_client_sent_late_does_not_count():
    probe, _ = answering(lambda rate: rate, lag_ms=lambda rate: 0.5 if rate < 10_000 else 2 * CLIENT_LAG_MS)
    capacity, probes = asyncio.run(search_capacity(probe, 1_000.0))
    assert capacity < 10_000
    assert all(not p.valid and not p.answered for p in probes if p.point.rate >= 10_000)
    assert capacity == max(p.point.rate for p in probes if p.point.rate < 10_000)


def test_with_no_probe_counted_the_capacity_is_a_quarter_of_the_first_rate():
    probe, _ = answering(lambda rate: rate, lag_ms=lambda _rate: 2 * CLIENT_LAG_MS)
    capacity, probes = asyncio.run(search_capacity(probe, 400.0))
    assert capacity == 100.0
    assert not any(p.valid for p in probes)
