"""Batching to a latency target: the cost fit, and the shedding rules (refused at once, with a retry
delay, never served late; a lone request never waits)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

import numpy as np
import pytest

from services.common import timing
from services.common.batchcost import LATE_SHARE, MIN_BATCHES, STEER_SHARE, BatchCost, Steer
from services.common.batcher import PROBE_NS, BatchingConfig, DynamicBatcher, _Request
from services.common.errors import Overloaded
from services.common.stats import VersionStats


class Sleeper:
    """A model whose batch takes `fixed + per_row * rows` seconds (a sleep); it counts the rows it ran."""

    def __init__(self, fixed: float, per_row: float = 0.0) -> None:
        self.fixed, self.per_row = fixed, per_row
        self.rows: list[int] = []

    def __call__(self, inputs):
        x = inputs["X"]
        self.rows.append(len(x))
        time.sleep(self.fixed + self.per_row * len(x))
        return {"Y": x}


OVERLOADED = BatchingConfig(max_batch_size=64, max_latency_ms=150)


def rows(count: int = 1) -> dict[str, np.ndarray]:
    return {"X": np.ones((count, 2), dtype=np.float32)}


async def learned(model: Sleeper, config: BatchingConfig, sizes: tuple[int, ...] = (1,)) -> DynamicBatcher:
    """A batcher that has run enough batches, of `sizes` rows in turn, to trust its cost fit (lone
    requests: the fixed cost only; two sizes: the cost per row too)."""
    batcher = DynamicBatcher("latency", model, config, VersionStats())
    for count in itertools.islice(itertools.cycle(sizes), len(sizes) * MIN_BATCHES):
        await batcher.submit(rows(count))
    return batcher


def test_the_fit_finds_fixed_and_per_row_cost_and_follows_a_slower_machine():
    cost = BatchCost()
    rng = np.random.default_rng(0)
    for _ in range(200):
        rows = int(rng.integers(1, 33))
        cost.observe(rows, 2e6 + 0.5e6 * rows + rng.normal(0, 1e4))
    fixed, per_row = cost.line()
    assert fixed == pytest.approx(2e6, rel=0.05) and per_row == pytest.approx(0.5e6, rel=0.02)
    assert 0 < cost.margin_ns() < 1e5
    for _ in range(200):
        rows = int(rng.integers(1, 33))
        cost.observe(rows, 2 * (2e6 + 0.5e6 * rows))
    assert cost.predict_ns(16) == pytest.approx(2 * (2e6 + 0.5e6 * 16), rel=0.02)


def test_batches_of_one_size_give_a_line_through_the_origin():
    cost = BatchCost()
    for _ in range(MIN_BATCHES):
        cost.observe(4, 8e6)
    assert cost.ready and cost.line() == (0.0, 2e6) and cost.predict_ns(8) == 16e6


async def test_a_request_that_can_never_meet_the_target_is_refused_at_once_with_a_retry_delay():
    model = Sleeper(0.03)
    batcher = await learned(model, BatchingConfig(max_batch_size=8, max_latency_ms=10))
    runs = len(model.rows)
    started = time.perf_counter()
    with pytest.raises(Overloaded, match="cannot answer within its 10 ms target") as refused:
        await batcher.submit(rows())
    assert time.perf_counter() - started < 0.03, "refused only after the model ran"
    assert refused.value.retry_delay is not None and refused.value.retry_delay > 0
    assert len(model.rows) == runs
    await batcher.close()


async def test_requests_the_queue_would_make_late_are_refused_and_the_others_served():
    model = Sleeper(0.01)
    batcher = await learned(model, BatchingConfig(max_batch_size=1, max_latency_ms=35))
    runs = len(model.rows)
    outcomes = await asyncio.gather(*(batcher.submit(rows()) for _ in range(12)), return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, Exception)]
    served = len(outcomes) - len(refused)
    assert 1 <= served <= 4 and all(isinstance(o, Overloaded) for o in refused), outcomes
    assert all(o.retry_delay is not None and o.retry_delay > 0 for o in refused)
    assert len(model.rows) - runs == served, "a refused request ran"
    await batcher.close()


async def test_a_lone_request_never_waits_for_batch_mates():
    model = Sleeper(0.002)
    batcher = await learned(model, BatchingConfig(max_batch_size=8, max_latency_ms=200))
    for _ in range(5):
        recorded = timing.begin()
        await batcher.submit(rows())
        assert recorded.batch_wait_ns == 0 and recorded.batch_size == 1
    await batcher.close()


async def test_concurrent_callers_are_batched_within_the_target():
    model = Sleeper(0.005, 0.0005)
    batcher = await learned(model, BatchingConfig(max_batch_size=8, max_latency_ms=500))

    async def caller() -> None:
        for _ in range(6):
            await batcher.submit(rows())

    await asyncio.gather(*(caller() for _ in range(8)))
    assert max(model.rows[MIN_BATCHES:]) > 1
    await batcher.close()


async def test_a_request_with_little_time_left_does_not_cut_the_younger_ones_batch_short():
    model = Sleeper(0.04, 0.01)
    batcher = await learned(model, BatchingConfig(max_batch_size=8, max_latency_ms=155), sizes=(1, 4))
    fixed, per_row = batcher._cost.line()
    assert fixed == pytest.approx(0.04e9, rel=0.2) and per_row == pytest.approx(0.01e9, rel=0.2)
    runs = len(model.rows)
    running = asyncio.ensure_future(batcher.submit(rows(4)))
    await asyncio.sleep(0.001)
    oldest = asyncio.ensure_future(batcher.submit(rows()))
    await asyncio.sleep(0.04)
    assert not oldest.done(), "refused on arrival: the test needs it queued"
    younger = await asyncio.gather(running, *(batcher.submit(rows()) for _ in range(4)), return_exceptions=True)
    assert not any(isinstance(outcome, Exception) for outcome in younger), younger
    assert model.rows[runs:] == [4, 4], "the oldest request, with 3 rows' time left, cut the batch to 3 rows"
    with pytest.raises(Overloaded, match="target now; retry shortly"):
        await oldest
    await batcher.close()


async def test_under_overload_requests_with_little_time_left_make_way_for_a_full_batch_however_many_they_are():
    model = Sleeper(0.04, 0.001)
    batcher = await learned(model, OVERLOADED, sizes=(1, 8))
    runs = len(model.rows)
    running = asyncio.ensure_future(batcher.submit(rows(45)))
    await asyncio.sleep(0.001)
    old = [asyncio.ensure_future(batcher.submit(rows())) for _ in range(6)]
    await asyncio.sleep(0.06)
    assert not any(request.done() for request in old), "refused on arrival: the test needs them queued"
    young = await asyncio.gather(running, *(batcher.submit(rows()) for _ in range(40)), return_exceptions=True)
    assert model.rows[runs:] == [45, 40], "six requests with time left for about 26 rows cut the batch short"
    assert not any(isinstance(outcome, Exception) for outcome in young)
    for request in old:
        with pytest.raises(Overloaded, match="target now; retry shortly"):
            await request
    await batcher.close()


def queue(batcher: DynamicBatcher, age_ms: float, count: int, columns: int = 2) -> list[_Request]:
    """Queue `count` one-row requests on `batcher` as if they had arrived `age_ms` ago (`columns` wide)."""
    arrived = time.perf_counter_ns() - int(age_ms * 1e6)
    future = asyncio.get_running_loop().create_future
    shapes = (("X", "<f4", (columns,)),)
    requests = [
        _Request(
            inputs={"X": np.ones((1, columns), np.float32)},
            rows=1,
            length=0,
            work=1,
            shapes=shapes,
            future=future(),
            arrived_ns=arrived,
        )
        for _ in range(count)
    ]
    batcher._pending.extend(requests)
    return requests


async def overloaded() -> DynamicBatcher:
    """A batcher whose batches cost about 40 ms and 1 ms a row, with a 150 ms target: a request queued 95
    ms ago has time for a batch of about 15 rows, a new one for a full batch (64)."""
    return await learned(Sleeper(0.04, 0.001), OVERLOADED, sizes=(1, 8))


async def test_the_batch_searched_for_is_the_full_one_past_any_number_of_requests_short_of_time():
    batcher = await overloaded()
    old, young = queue(batcher, 95, 12), queue(batcher, 0, 40)
    assert batcher._take() == young
    assert list(batcher._pending) == old
    await batcher.close()


async def test_requests_of_another_shape_among_those_short_of_time_do_not_end_the_search():
    batcher = await overloaded()
    for _ in range(4):
        queue(batcher, 95, 2)
        queue(batcher, 95, 1, columns=3)
    young = queue(batcher, 0, 40)
    assert batcher._take() == young
    await batcher.close()


@pytest.mark.parametrize("ahead", [0, 12, 16])
async def test_a_request_short_of_time_queued_behind_younger_ones_cuts_no_batch_it_cannot_join(ahead):
    batcher = await overloaded()
    old = queue(batcher, 95, ahead)
    young = queue(batcher, 0, 40)
    old += queue(batcher, 95, 1)
    assert batcher._take() == young
    assert list(batcher._pending) == old
    await batcher.close()


async def test_a_request_still_in_time_keeps_its_place_however_younger_ones_would_fill_a_batch():
    model = Sleeper(0.02)
    batcher = await learned(model, BatchingConfig(max_batch_size=8, max_latency_ms=1000))
    runs = len(model.rows)
    running = asyncio.ensure_future(batcher.submit(rows()))
    await asyncio.sleep(0.005)
    await asyncio.gather(running, *(batcher.submit(rows(count)) for count in (5, 4, 4)))
    assert model.rows[runs:] == [1, 5, 8]
    await batcher.close()


async def test_after_refusing_everything_for_a_while_one_lone_request_runs_so_the_fit_sees_the_machine_again():
    model = Sleeper(0.03)
    batcher = await learned(model, BatchingConfig(max_batch_size=8, max_latency_ms=10))
    with pytest.raises(Overloaded):
        await batcher.submit(rows())
    await asyncio.sleep(PROBE_NS / 1e9 + 0.05)
    runs = len(model.rows)
    await batcher.submit(rows())
    assert len(model.rows) == runs + 1
    with pytest.raises(Overloaded):
        await batcher.submit(rows())
    await batcher.close()


def test_one_stalled_batch_moves_the_fit_and_its_margin_only_a_little():
    cost = BatchCost()
    for _ in range(50):
        cost.observe(1, 2e5)
    before = cost.bound_ns(1)
    cost.observe(1, 8e6)
    assert cost.bound_ns(1) < 2 * before


class Jittery(Sleeper):
    """A model whose lone batches take `fixed` and `slow` seconds in turn: a fit with a wide margin."""

    def __init__(self, fixed: float, slow: float) -> None:
        super().__init__(fixed)
        self.times = itertools.cycle((fixed, slow))

    def __call__(self, inputs):
        self.fixed = next(self.times)
        return super().__call__(inputs)


def test_the_steer_forgives_up_to_what_admission_adds_and_gives_it_back_as_calls_end_late():
    steer, target = Steer(), 10e6
    per_call = STEER_SHARE * target * LATE_SHARE / (1 - LATE_SHARE)
    steer.count(0, 1000, target, most_ns=3e6)
    assert steer.forgiven_ns == pytest.approx(min(3e6, 1000 * per_call))
    steer.count(0, 100_000, target, most_ns=3e6)
    assert steer.forgiven_ns == 3e6, "in time all along: everything added is forgiven, and no more"
    steer.count(2, 0, target, most_ns=3e6)
    assert steer.forgiven_ns == pytest.approx(3e6 - 2 * STEER_SHARE * target)
    steer.count(100, 0, target, most_ns=3e6)
    assert steer.forgiven_ns == 0.0, "never less than nothing"


async def test_an_idle_model_serves_a_request_its_predicted_cost_fits_however_wide_the_margin():
    model = Jittery(0.001, 0.008)
    batcher = DynamicBatcher("latency", model, BatchingConfig(max_batch_size=8, max_queue_delay_ms=0), VersionStats())
    for _ in range(4 * MIN_BATCHES):
        await batcher.submit(rows())
    predicted, bound = batcher._cost.predict_ns(1), batcher._cost.bound_ns(1)
    assert bound > 1.2 * predicted, "the margin is not wide enough to test"
    batcher.reconfigure(BatchingConfig(max_batch_size=8, max_latency_ms=(predicted + bound) / 2e6))
    runs = len(model.rows)
    for _ in range(5):
        await batcher.submit(rows())
    assert len(model.rows) == runs + 5
    await batcher.close()


async def test_admission_forgives_the_margin_while_requests_end_in_time_and_takes_it_back_when_they_end_late():
    model = Jittery(0.001, 0.008)
    batcher = DynamicBatcher("latency", model, BatchingConfig(max_batch_size=8, max_latency_ms=1000), VersionStats())
    for _ in range(40):
        await batcher.submit(rows())
    margin = batcher._cost.margin_ns()
    assert margin > 0.2 * batcher._cost.predict_ns(1), "the margin is not wide enough to test"
    assert batcher._steer.forgiven_ns == margin, "requests all in time, admission still counts some of the margin"
    target_ms = 1.05 * batcher._cost.predict_ns(1) / 1e6
    batcher.reconfigure(BatchingConfig(max_batch_size=8, max_latency_ms=target_ms))
    late = 0
    for _ in range(60):
        started = time.perf_counter()
        with contextlib.suppress(Overloaded):
            await batcher.submit(rows())
        late += time.perf_counter() - started > target_ms / 1000
    assert late >= 20, "too few requests ended late to test"
    assert batcher._steer.forgiven_ns == 0.0, "half the requests end late, admission still forgives part of the margin"
    await batcher.close()
