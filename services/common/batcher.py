"""The dynamic batcher: concurrent requests to one model version run as one batch.

Each request is validated before it joins the queue and gets exactly its own rows back. A full queue
refuses at once (RESOURCE_EXHAUSTED) instead of making everyone wait longer; a cancelled caller's
request is dropped before it runs; if a batch fails, its requests are rerun one by one so a poisoned
request fails alone. In length-aware mode, sequence inputs are padded only to the longest request in
the batch, and a batch is filled with requests of lengths close to the oldest one's.

Given a latency target (`max_latency_ms`) instead of a queue delay, the batcher learns what its
batches cost (`BatchCost`: time against work, rows or tokens) and holds each request to the target:
it waits for batch-mates only as long as a full batch would still end in time (and at most half the
target), sizes each batch so its oldest request ends in time (or, where that cuts the batch short, leaves
the oldest out for a larger batch, so that under overload requests with little time left do not cut
everyone's batch short), and refuses at once (RESOURCE_EXHAUSTED with a retry delay) a request
that the work queued ahead of it would make late, rather than serving it late.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from services.common import metrics, timing
from services.common.batchcost import BatchCost, Steer
from services.common.errors import Overloaded
from services.common.stats import VersionStats

Arrays = dict[str, np.ndarray]
LOAD_MEMORY_SECONDS = 0.005
"""How long after a batch that left several callers in play the service counts as under load (no
inline runs): well above the time a caller under load takes to send its next request after an answer."""
LOAD_MEMORY_NS = int(LOAD_MEMORY_SECONDS * 1e9)
MIN_RETRY_SECONDS = 0.01
INLINE_MAX_NS = 1_000_000
"""The longest a request may take, on the fitted cost of the batches run so far, to run inline on the
event loop when idle: a large request (a thousand images) runs on the worker thread like any batch."""
PROBE_NS = 500_000_000
"""A version with a latency target that has run nothing for this long runs a lone request even if its
cost fit says it would be late: the fit sees the machine again (it may have been idle, or been fooled
by stalled batches), rather than refusing everything for ever."""
WAIT_SHARE = 0.5
"""With a latency target, the most of it a batch waits for batch-mates (counted from its oldest
request's arrival): the rest is left for what the batcher does not see, the calls waiting before a
handler takes them and the answers on their way out, which grow with load on a busy event loop."""
Predict = Callable[[Arrays], Arrays]


@dataclass(frozen=True)
class BatchingConfig:
    """How requests are grouped. `max_batch_size` 1 turns batching off.

    Attributes:
        max_batch_size: most rows per model execution.
        max_queue_delay_ms: longest the oldest queued request waits for others to join it, counted
            from when the model became free (or from its arrival, if later), and only while the queue
            holds fewer requests than there were callers in play when the last batch ended (that
            batch's callers, whose next requests are likely on their way, plus those already queued).
            So a lone caller never waits, nor does the first request after an idle spell, and under a
            closed loop of callers the batch after a batch waits for them rather than running the
            one request that queued meanwhile alone.
        max_queue_size: most requests waiting; one more is refused with RESOURCE_EXHAUSTED.
        pad: inputs whose second dimension is a sequence, with their pad value.
        length_aware: pad sequences to the longest in the batch and group similar lengths; if False,
            pad every sequence to `fixed_length` (or the longest, if longer).
        fixed_length: the padded length when not length-aware.
        max_batch_tokens: in length-aware mode, most rows x padded length per batch (0: no limit), so
            long sequences run in small batches and short ones in large batches. A request over the
            budget on its own still runs, alone.
        max_latency_ms: the latency target (0: none, `max_queue_delay_ms` batches): each request's
            queue, batch wait and compute are to end within it. Replaces the queue delay: the batcher
            waits for batch-mates while a full batch would still end in time (under the same rule of
            callers in play, so a lone caller never waits), runs the largest batch that ends in time
            for each of its requests (or, where their deadlines cut the oldest request's batch short, the
            largest the search builds anchored on younger requests of its shape), and refuses requests
            that cannot end in time.
        inline_when_idle: run a request on the event loop's thread, skipping the worker-thread round
            trip (about 0.2 ms), when it is the only one queued, nothing runs, its work takes at most
            `INLINE_MAX_NS` on the cost fitted so far (at least one batch ran), and no batch that left
            several callers in play ended in the last `LOAD_MEMORY_SECONDS`: low latency when idle,
            batching under load. (Right after a batch, the first of its callers' next requests arrives alone; run
            inline, it would hold the event loop while the others arrive, one by one.) Only for models
            that take well under a millisecond, since the event loop waits while they run.
    """

    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 1024
    pad: Mapping[str, int] = field(default_factory=dict)
    length_aware: bool = True
    fixed_length: int = 0
    max_batch_tokens: int = 0
    max_latency_ms: float = 0.0
    inline_when_idle: bool = False


@dataclass(eq=False)
class _Request:
    inputs: Arrays
    rows: int
    length: int
    work: int
    shapes: tuple
    future: asyncio.Future
    probe: bool = False
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)
    arrived_ns: int = 0
    queue_ns: int = 0
    batch_wait_ns: int = 0
    compute_ns: int = 0
    batch_rows: int = 0
    counted: bool = True


class DynamicBatcher:
    """Batches requests for one loaded model version and runs them on a worker thread."""

    def __init__(
        self, name: str, predict: Predict, config: BatchingConfig, stats: VersionStats, version: str = ""
    ) -> None:
        """Args:
        name: model name, for metrics.
        predict: runs the model on a batch; returns outputs whose first dimension is the batch's rows.
        config: batching settings.
        stats: where executions and queue times are recorded.
        version: the model version batched, for metrics.
        """
        self._name = name
        self._version = version
        self._predict = predict
        self._config = config
        self._stats = stats
        self._pending: deque[_Request] = deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
        self._worker: asyncio.Task | None = None
        self._busy = False
        self._free_ns = 0
        self._callers_in_play = 0
        self._closing = False
        self.in_flight = 0
        """Requests submitted and not yet answered (queued or running)."""
        self._ns_per_row = 0.0
        self._held_from_ns = 0
        self._held_until_ns = 0
        self._cost = BatchCost()
        self._steer = Steer()
        self._running_started_ns = 0
        self._running_work = 0
        self._shed = metrics.SHED.labels(name, version)
        self._batch_rows = metrics.BATCH_ROWS.labels(name, version)
        self._queue_seconds = metrics.QUEUE_SECONDS.labels(name, version)
        self._compute_seconds = metrics.COMPUTE_SECONDS.labels(name, version)
        self._cancelled = metrics.CANCELLED.labels(name, version)
        self._queue_full = metrics.QUEUE_FULL.labels(name, version)
        metrics.QUEUE_DEPTH.labels(name, version).set_function(lambda: len(self._pending))
        metrics.QUEUE_LIMIT.labels(name, version).set(config.max_queue_size)

    async def submit(self, inputs: Arrays, counted: bool = True) -> Arrays:
        """Queue one validated request and wait for its outputs.

        Args:
            inputs: input name -> array with the request's rows first.
            counted: record the request's queue time in the statistics (not a warm-up's).

        Returns:
            Output name -> this request's rows of the output.

        Raises:
            Overloaded: the queue is full, or the request cannot meet the latency target (now, or when
                its batch is formed).
            asyncio.CancelledError: the caller cancelled (or its deadline passed), while the request
                was queued or running; counted in `maas_batch_cancelled_total`.
            Exception: whatever the model raised for this request alone.
        """
        self.admit()
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name=f"batcher-{self._name}")
        first = next(iter(inputs.values()))
        padded = self._config.pad
        rows = first.shape[0]
        length = max((inputs[n].shape[1] for n in padded if n in inputs), default=0)
        request = _Request(
            inputs=inputs,
            rows=rows,
            length=length,
            work=rows * length if length else rows,
            shapes=tuple((n, a.dtype.str, a.shape[2:] if n in padded else a.shape[1:]) for n, a in inputs.items()),
            future=asyncio.get_running_loop().create_future(),
            counted=counted,
        )
        request.arrived_ns = timing.arrival_ns() or request.enqueued_ns
        if self._config.max_latency_ms and self._cost.ready:
            self._admit(request)
        self._pending.append(request)
        self.in_flight += 1
        try:
            if self._config.inline_when_idle and await self._alone(request):
                outputs = self._run_inline(request)
            else:
                self._arrived.set()
                outputs = await request.future
        except asyncio.CancelledError:
            self._cancelled.inc()
            raise
        finally:
            self.in_flight -= 1
        if request.counted:
            self._stats.record_compute(request.queue_ns + request.batch_wait_ns, request.compute_ns)
        timing.record(request.queue_ns, request.batch_wait_ns, request.compute_ns, request.batch_rows)
        return outputs

    def admit(self) -> None:
        """Refuse at once if the queue is full: cheap enough to run before a request is even decoded.

        Raises:
            Overloaded: the queue holds `max_queue_size` requests.
        """
        if len(self._pending) >= self._config.max_queue_size:
            self._queue_full.inc()
            raise Overloaded(
                f"model '{self._name}' has {len(self._pending)} requests queued, its limit; retry shortly",
                retry_delay=self.drain_seconds(),
            )

    async def _alone(self, request: _Request) -> bool:
        """Yield once so that requests already received can queue too; then claim `request` for
        inline execution if it is still the only one, nothing runs, the service is not under load, and the
        request is small (at most `INLINE_MAX_NS` on the fitted cost)."""
        loaded = self._callers_in_play > 1 and time.perf_counter_ns() - self._free_ns < LOAD_MEMORY_NS
        large = not self._cost.batches or self._cost.predict_ns(request.work) > INLINE_MAX_NS
        if self._busy or len(self._pending) > 1 or loaded or large:
            return False
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            self._pending.remove(request)
            raise
        if self._busy or self._closing or len(self._pending) != 1 or self._pending[0] is not request:
            return False
        self._pending.popleft()
        return True

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return len(self._pending)

    def _admit(self, request: _Request) -> None:
        """Refuse `request` if, behind the batch running and the requests queued, it would end after
        its latency target. An idle model runs a request at once, so it refuses one only if the request's
        own predicted cost is over the target: the margin, learned on a machine that may stall, never
        keeps an idle model refusing work (which would also keep it from seeing the machine again).

        Raises:
            Overloaded: it would end late; the retry delay is how long the work ahead takes.
        """
        now = time.perf_counter_ns()
        idle = not self._busy and not self._pending
        if idle and now - self._free_ns > PROBE_NS:
            request.probe = True
            return
        if idle:
            ahead = self._cost.predict_ns(request.work)
        else:
            ahead = self._running_left_ns(now) + self._drain_ns(self._pending, request)
        if now + ahead - self._steer.forgiven_ns <= request.arrived_ns + self._config.max_latency_ms * 1e6:
            return
        self._shed.inc()
        raise Overloaded(
            f"model '{self._name}' cannot answer within its {self._config.max_latency_ms:g} ms target now "
            f"({len(self._pending)} requests queued); retry shortly",
            retry_delay=max(MIN_RETRY_SECONDS, round(ahead / 1e9, 3)),
        )

    def _running_left_ns(self, now: int) -> float:
        """How long the batch running now should still take, on the fitted cost (0 when none runs)."""
        if not self._busy:
            return 0.0
        return max(0.0, self._running_started_ns + self._cost.predict_ns(self._running_work) - now)

    def _drain_ns(self, queued: deque[_Request], *more: _Request) -> float:
        """How long the requests `queued` and `more` take to run, in full batches, with one margin."""
        rows = sum(r.rows for r in queued) + sum(r.rows for r in more)
        work = sum(r.work for r in queued) + sum(r.work for r in more)
        batches = max(1, math.ceil(rows / self._config.max_batch_size))
        return batches * self._cost.predict_ns(work / batches) + self._cost.margin_ns()

    def drain_seconds(self) -> float:
        """About how long the requests queued now take to run, at the last batch's speed per row
        (at least `MIN_RETRY_SECONDS`): the retry delay a refusal for a full queue suggests."""
        rows = sum(request.rows for request in self._pending)
        return max(MIN_RETRY_SECONDS, round(rows * self._ns_per_row / 1e9, 3))

    def reconfigure(self, config: BatchingConfig) -> None:
        """Batch by `config` from the next batch on; requests already queued keep their place."""
        self._config = config
        metrics.QUEUE_LIMIT.labels(self._name, self._version).set(config.max_queue_size)
        self._arrived.set()

    async def close(self) -> None:
        """Finish every queued request, then stop the worker thread and drop the version's gauges."""
        self._closing = True
        self._arrived.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)
        for gauge in (metrics.QUEUE_DEPTH, metrics.QUEUE_LIMIT):
            with contextlib.suppress(KeyError):
                gauge.remove(self._name, self._version)

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            if not self._pending:
                if self._closing:
                    return
                self._arrived.clear()
                continue
            self._held_from_ns = self._held_until_ns = 0
            await self._fill(self._pending[0])
            batch = self._take()
            if self._pending:
                self._arrived.set()
            if batch:
                await self._execute(batch)

    async def _fill(self, oldest: _Request) -> None:
        """Wait for batch-mates while the queue holds fewer requests than there were callers in play
        when the last batch ended (its callers, whose next requests are likely on their way, and those
        already queued) and less than a full batch, until the oldest request has waited
        `max_queue_delay_ms` since the model became free (or since it arrived, if later). A request
        that arrives after that window, as after an idle spell, finds no one to wait for. With a latency
        target the window is instead what the target leaves after a full batch's cost (with its margin),
        counted from the oldest request's arrival, and at most `WAIT_SHARE` of the target; no waiting until
        the cost is known."""
        if self._config.max_latency_ms:
            if not self._cost.ready:
                return
            rows = sum(r.rows for r in self._pending)
            full = sum(r.work for r in self._pending) / rows * self._config.max_batch_size
            target = self._config.max_latency_ms * 1e6
            window = int(min(WAIT_SHARE * target, target - self._cost.bound_ns(full)))
            if oldest.enqueued_ns > self._free_ns + window:
                return
            deadline = oldest.arrived_ns + window
        else:
            delay = int(self._config.max_queue_delay_ms * 1e6)
            if oldest.enqueued_ns > self._free_ns + delay:
                return
            deadline = max(oldest.enqueued_ns, self._free_ns) + delay
        while (
            not self._closing
            and len(self._pending) < self._callers_in_play
            and sum(r.rows for r in self._pending) < self._config.max_batch_size
        ):
            now = time.perf_counter_ns()
            remaining = (deadline - now) / 1e9
            if remaining <= 0:
                return
            self._held_from_ns = self._held_from_ns or now
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return
            finally:
                self._held_until_ns = time.perf_counter_ns()

    def _take(self) -> list[_Request]:
        """Pick the next batch: the oldest live request, then compatible ones, closest lengths first. With
        a latency target, if the deadlines of the batch's requests left out a request that would otherwise
        have fit, and the batch is not full, batches anchored on younger requests of its shape are tried
        too, and of those built the one with the most rows runs (`_anchored`). A probe is only ever the
        oldest request (it is marked on arrival at an idle, empty queue): its batch is never passed over."""
        live = [r for r in self._pending if not r.future.done()]
        target = self._config.max_latency_ms * 1e6
        now = time.perf_counter_ns()
        if target and self._cost.ready:
            live = [r for r in live if r.probe or not self._late(r, now + self._cost.predict_ns(r.work) - r.arrived_ns)]
        if not live:
            self._pending.clear()
            return []
        batch, cut = self._batch_from(live, now)
        if cut and not live[0].probe:
            batch = self._anchored(live, batch, now)
        chosen = set(map(id, batch))
        self._pending = deque(r for r in live if id(r) not in chosen)
        return batch

    def _anchored(self, live: list[_Request], oldest: list[_Request], now: int) -> list[_Request]:
        """The largest batch anchored on one of the requests of `live`'s first one's shape, given that its
        members' deadlines cut the first one's batch (`oldest`) short. A younger anchor has more time and fewer requests
        behind it: while deadlines cut the batches, they grow with their anchor; once none does, they are
        bounded by the rows and the queue, and shrink. So the search doubles its step from the oldest
        until a batch is not cut (the last request of the shape, alone, never is), bisects back to the
        first that is not, and runs the one with the most rows of those it built (the oldest anchor on a
        tie). Under overload, requests with little time left thus make way for a full batch, and are refused
        at the next take if late by then, rather than cutting every batch short: short batches cost more
        per call, so the queue would fall further behind and most calls end refused. A take builds 2 batches
        when only the oldest request is short of time, and about 2 log2(n) when n are."""
        alike = [r for r in live if r.shapes == live[0].shapes]
        batches = {0: oldest}
        cut, step = 0, 1
        while True:
            uncut = min(cut + step, len(alike) - 1)
            batches[uncut], was_cut = self._batch_from(alike[uncut:], now)
            if not was_cut or uncut == len(alike) - 1:
                break
            cut, step = uncut, 2 * step
        while uncut - cut > 1:
            middle = (cut + uncut) // 2
            batches[middle], was_cut = self._batch_from(alike[middle:], now)
            cut, uncut = (middle, uncut) if was_cut else (cut, middle)
        return max(sorted(batches.items()), key=lambda item: sum(r.rows for r in item[1]))[1]

    def _batch_from(self, live: list[_Request], now: int) -> tuple[list[_Request], bool]:
        """The batch anchored on `live`'s first request: it, then compatible ones, closest lengths first,
        as many as fit the rows, the token budget and (with a latency target) the time each request in the
        batch has left, the one added included; and whether the batch is cut: not full, and the time its
        members had left out a request that would otherwise have fit (one whose own time was too short
        does not cut it)."""
        target = self._config.max_latency_ms * 1e6
        timed = bool(target and self._cost.ready)
        anchor, others = live[0], [r for r in live[1:] if r.shapes == live[0].shapes]
        time_left = anchor.arrived_ns + target - now if timed else math.inf
        if self._config.pad and self._config.length_aware:
            others.sort(key=lambda r: abs(r.length - anchor.length))
        budget = self._config.max_batch_tokens if self._config.pad and self._config.length_aware else 0
        batch, rows, width, work, cut = [anchor], anchor.rows, anchor.length, anchor.work, False
        for request in others:
            if rows == self._config.max_batch_size:
                break
            wider = max(width, request.length)
            if rows + request.rows > self._config.max_batch_size or (budget and (rows + request.rows) * wider > budget):
                continue
            if timed:
                left = min(time_left, request.arrived_ns + target - now)
                cost = self._cost.bound_ns(work + request.work)
                if cost > left:
                    cut = cut or cost > time_left
                    continue
                time_left = left
            batch.append(request)
            rows, width, work = rows + request.rows, wider, work + request.work
        return batch, cut and rows < self._config.max_batch_size

    def _late(self, request: _Request, latency_ns: float) -> bool:
        """Refuse `request` (its caller gets RESOURCE_EXHAUSTED) if, run now and alone at the fitted
        speed, it would end `latency_ns` after it arrived, over the target; True if it was refused. (The
        margin plans admissions; a request already admitted is dropped only when it is late for sure.)"""
        if latency_ns <= self._config.max_latency_ms * 1e6:
            return False
        self._shed.inc()
        request.future.set_exception(
            Overloaded(
                f"model '{self._name}' cannot answer within its {self._config.max_latency_ms:g} ms target now; "
                "retry shortly",
                retry_delay=self.drain_seconds(),
            )
        )
        return True

    def _learn_margin(self, batch: list[_Request], now: int) -> None:
        """Steer how much of the cost fit's margin admission forgives by how many of the batch's requests
        (those answered, not warm-ups) end after the target (`Steer`)."""
        served = [r.arrived_ns for r in batch if r.counted and not r.future.done()]
        self._steer.observe(served, now, self._config.max_latency_ms * 1e6, self._cost.margin_ns())

    def _collate(self, batch: list[_Request]) -> Arrays:
        """Pad and concatenate the batch's inputs (always a fresh, writable array, as torch wants)."""
        config = self._config
        longest = max(r.length for r in batch)
        width = longest if config.length_aware else max(longest, config.fixed_length)
        collated = {}
        for name in batch[0].inputs:
            arrays = [r.inputs[name] for r in batch]
            if name in config.pad:
                arrays = [
                    np.pad(
                        a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=config.pad[name]
                    )
                    for a in arrays
                ]
            collated[name] = np.concatenate(arrays)
        return collated

    def _predict_rows(self, batch: Arrays, rows: int) -> Arrays:
        outputs = self._predict(batch)
        for name, array in outputs.items():
            if array.shape[0] != rows:
                raise RuntimeError(f"model '{self._name}' returned {array.shape[0]} rows of {name} for {rows} inputs")
        return outputs

    def _record(self, rows: int, work: int, compute_ns: int, waits: list[int]) -> None:
        self._stats.record_execution(rows, compute_ns)
        self._cost.observe(work, compute_ns)
        self._ns_per_row = compute_ns / rows
        self._batch_rows.observe(rows)
        self._compute_seconds.observe(compute_ns / 1e9)
        for wait in waits:
            self._queue_seconds.observe(wait / 1e9)

    def _run_inline(self, request: _Request) -> Arrays:
        started = time.perf_counter_ns()
        outputs = self._predict_rows(self._collate([request]), request.rows)
        request.queue_ns, request.compute_ns = started - request.enqueued_ns, time.perf_counter_ns() - started
        request.batch_rows = request.rows
        self._record(request.rows, request.work, request.compute_ns, [request.queue_ns] if request.counted else [])
        self._free_ns, self._callers_in_play = time.perf_counter_ns(), 1
        return outputs

    async def _execute(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter_ns()
        rows = sum(r.rows for r in batch)
        work = sum(r.work for r in batch)
        waits = [started - r.enqueued_ns for r in batch]
        held = [max(0, self._held_until_ns - max(self._held_from_ns, r.enqueued_ns)) for r in batch]
        self._busy = True
        self._running_started_ns, self._running_work = started, work
        try:
            outputs = await loop.run_in_executor(self._executor, self._predict_rows, self._collate(batch), rows)
        except Exception as exc:
            if len(batch) > 1:
                for request in batch:
                    await self._execute([request])
            elif not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        finally:
            self._busy = False
            self._free_ns = time.perf_counter_ns()
            self._callers_in_play = sum(not r.future.done() for r in (*batch, *self._pending))
        compute_ns = time.perf_counter_ns() - started
        if self._config.max_latency_ms:
            self._learn_margin(batch, started + compute_ns)
        self._record(
            rows, work, compute_ns, [wait for request, wait in zip(batch, waits, strict=True) if request.counted]
        )
        offset = 0
        for request, waited, wait in zip(batch, waits, held, strict=True):
            request.queue_ns, request.batch_wait_ns = waited - wait, wait
            request.compute_ns, request.batch_rows = compute_ns, rows
            if not request.future.done():
                request.future.set_result({n: a[offset : offset + request.rows] for n, a in outputs.items()})
            offset += request.rows
