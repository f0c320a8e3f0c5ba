"""The latency bench's capacity search (services/bench/latency.py) on services whose answers at each rate
are known: capacity is the highest rate a service keeps up with, its ceiling the most it answers in time."""

import asyncio
from collections.abc import Callable

import pytest

from services.bench.latency import (
    CAPACITY_PROBES,
    CLIENT_LAG_MS,
    PROBE_PARTS,
    Outcome,
    Point,
    Probe,
    search_capacity,
)

TARGET_MS = 10.0
SECONDS = 1.0


def loop(rate: float, goodput: float, lag_ms: float = 0.5, late: float = 0.0, failed: int = 0) -> Point:
    """An open loop at `rate` calls per second of which `goodput` per second were answered within T, `late`
    per second answered after it, `failed` calls failed and the rest were refused, the client `lag_ms`
    late."""
    calls = round(rate * SECONDS)
    served, later = round(min(rate, goodput) * SECONDS), round(late * SECONDS)

    def outcome(i: int) -> Outcome:
        answered = i < min(served + later, calls - failed)
        seconds = 0.002 if i < served else 2 * TARGET_MS / 1000
        return Outcome(i / rate, lag_ms / 1000, seconds, ok=answered, shed=not answered and i < calls - failed)

    return Point("probe", rate, SECONDS, [outcome(i) for i in range(calls)], TARGET_MS)


def answering(goodput: Callable[[float], float], lag_ms: Callable[[float], float] = lambda _rate: 0.5):
    """A probe of a service that, offered `rate` calls per second, answers `goodput(rate)` of them within
    T and refuses the rest, with the client `lag_ms(rate)` late; and the rates it was probed at."""
    rates = []

    async def probe(rate: float) -> Probe:
        rates.append(rate)
        return Probe(tuple(loop(rate, goodput(rate), lag_ms(rate)) for _ in range(PROBE_PARTS)))

    return probe, rates


def soft_knee(rate: float) -> float:
    """A batching service's goodput: all answered up to 100 calls per second, then a growing share refused
    (1% at about 102.6 calls per second, `PROBE_MISSED`) up to a ceiling of 140."""
    return rate if rate <= 100 else min(140.0, 100 + 0.6 * (rate - 100))


def test_capacity_is_the_highest_rate_kept_up_with_and_the_ceiling_the_most_goodput():
    probe, rates = answering(soft_knee)
    capacity, ceiling, probes = asyncio.run(search_capacity(probe, 200.0))
    assert len(probes) == CAPACITY_PROBES == len(rates)
    assert rates[:3] == [200.0, 100.0, 150.0]
    assert 100 <= capacity <= 105
    assert capacity == max(p.point.rate for p in probes if p.answered)
    assert ceiling == pytest.approx(140.0)
    assert all(p.answered for p in probes if p.point.rate <= 100)
    assert not any(p.answered for p in probes if p.point.rate >= 105)


def test_the_search_doubles_past_the_first_rate_while_the_service_keeps_up():
    probe, rates = answering(lambda rate: min(rate, 18_000.0))
    capacity, ceiling, _ = asyncio.run(search_capacity(probe, 2_000.0))
    assert rates[:5] == [2_000.0, 4_000.0, 8_000.0, 16_000.0, 32_000.0]
    assert 0.95 * 18_000 <= capacity <= 18_000
    assert ceiling == pytest.approx(18_000.0)


def test_one_stalled_loop_of_three_does_not_decide_a_probe():
    stalled = Probe((loop(100.0, 50.0), loop(100.0, 100.0), loop(100.0, 100.0)))
    assert stalled.answered
    assert not Probe((loop(100.0, 50.0), loop(100.0, 50.0), loop(100.0, 100.0))).answered


def test_calls_answered_after_t_are_missed_as_refused_ones_are():
    assert Probe(tuple(loop(100.0, 99.5, late=0.5) for _ in range(PROBE_PARTS))).answered
    late = Probe(tuple(loop(100.0, 97.0, late=3.0) for _ in range(PROBE_PARTS)))
    assert late.valid and late.point.shed == 0 and not late.answered


def test_a_call_that_failed_otherwise_than_refused_leaves_the_probe_out_of_the_ceiling():
    failed = Probe((loop(100.0, 100.0, failed=1), loop(100.0, 100.0), loop(100.0, 100.0)))
    assert not failed.valid and not failed.answered

    async def probe(rate: float) -> Probe:
        return Probe(tuple(loop(rate, rate, failed=int(rate >= 1_000)) for _ in range(PROBE_PARTS)))

    capacity, ceiling, _ = asyncio.run(search_capacity(probe, 400.0))
    assert capacity == ceiling < 1_000


def test_a_probe_the_client_sent_late_does_not_count():
    probe, _ = answering(lambda rate: rate, lag_ms=lambda rate: 0.5 if rate < 10_000 else 2 * CLIENT_LAG_MS)
    capacity, ceiling, probes = asyncio.run(search_capacity(probe, 1_000.0))
    assert all(not p.valid and not p.answered for p in probes if p.point.rate >= 10_000)
    assert capacity == ceiling == max(p.point.rate for p in probes if p.point.rate < 10_000)


def test_a_service_that_keeps_up_with_no_rate_gets_the_lowest_rate_probed():
    probe, rates = answering(lambda rate: 0.5 * rate)
    capacity, ceiling, _ = asyncio.run(search_capacity(probe, 400.0))
    assert rates == [400.0 / 2**i for i in range(CAPACITY_PROBES)]
    assert capacity == min(rates)
    assert ceiling == pytest.approx(200.0)
