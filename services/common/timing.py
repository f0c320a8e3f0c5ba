"""Where a request's time went, per hop: queue, batch wait, compute and batch size.

A caller asks with request metadata `maas-timing: 1`; every hop then answers with one trailing
`maas-timing` entry of its own, after those of the hops it called:

    hop=vision;model=fashion_cnn;version=1;queue_us=12;batch_wait_us=0;compute_us=340;batch_size=1;total_us=420
    hop=gateway;downstream_us=610;total_us=700

`queue_us` is the time a request waited while the model ran other batches (or for the batcher to pick
it up), `batch_wait_us` the time the batcher held its batch open for batch-mates, `compute_us` the
model's run of the batch, `batch_size` that batch's rows, `total_us` the hop's own time for the call,
`downstream_us` the time it spent in calls to other hops. The values are recorded whenever a
`Timing` is current (asked for, or tracing on), so with tracing on they are span attributes too. A
call that asks for nothing has no `Timing`, and the batcher records nothing for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

TIMING_KEY = "maas-timing"
"""The request metadata key that asks for timing (value `1`), and the trailing metadata key of each hop."""
PARTS = ("queue_us", "batch_wait_us", "compute_us")
"""The parts of a model hop's time, in order; with what the servicer does around them they make `total_us`."""


@dataclass
class Timing:
    """What one call's hop measured; filled in while the call is served.

    Attributes:
        queue_ns: waiting for the model while it ran other batches.
        batch_wait_ns: waiting for batch-mates.
        compute_ns: the model's run of the request's batch.
        batch_size: rows in that batch (0: no model ran).
        downstream_ns: time in calls to other hops.
        hops: the `maas-timing` entries the hops this one called answered with, in order.
    """

    queue_ns: int = 0
    batch_wait_ns: int = 0
    compute_ns: int = 0
    batch_size: int = 0
    downstream_ns: int = 0
    hops: list[str] = field(default_factory=list)

    def attributes(self) -> dict[str, int]:
        """The hop's measurements as span attributes (`maas.` is prefixed by the tracer)."""
        values = {"downstream_us": self.downstream_ns // 1000} if self.downstream_ns else {}
        if self.batch_size:
            values.update(
                queue_us=self.queue_ns // 1000,
                batch_wait_us=self.batch_wait_ns // 1000,
                compute_us=self.compute_ns // 1000,
                batch_size=self.batch_size,
            )
        return values

    def entry(self, hop: str, model: str, version: str, total_ns: int) -> str:
        """This hop's trailing `maas-timing` entry.

        Args:
            hop: the hop's name (the service).
            model: the model the call was for ("": none).
            version: the version that answered it ("": none).
            total_ns: the hop's own time for the call.
        """
        fields = [f"hop={hop}"]
        if model:
            fields.append(f"model={model}")
        if version:
            fields.append(f"version={version}")
        fields += [f"{key}={value}" for key, value in self.attributes().items()]
        fields.append(f"total_us={total_ns // 1000}")
        return ";".join(fields)

    def adopt(self, other: Timing) -> None:
        """Take the model run `other` recorded (a front reporting what its replica measured)."""
        self.queue_ns, self.batch_wait_ns, self.compute_ns = other.queue_ns, other.batch_wait_ns, other.compute_ns
        self.batch_size = other.batch_size


_timing_var: ContextVar[Timing | None] = ContextVar("maas_timing", default=None)
_arrival_var: ContextVar[int] = ContextVar("maas_arrival", default=0)


def arrive(ns: int) -> None:
    """Note when the current call reached this service (`time.perf_counter_ns()`): a latency target
    counts from there, so the time the call spent before reaching the batcher counts too."""
    _arrival_var.set(ns)


def arrival_ns() -> int:
    """When the current call reached this service (0: not noted)."""
    return _arrival_var.get()


def begin() -> Timing:
    """Start recording the current call's timing (in this task and the tasks it starts)."""
    timing = Timing()
    _timing_var.set(timing)
    return timing


def current() -> Timing | None:
    """The current call's timing, or None when nobody asked and tracing is off."""
    return _timing_var.get()


def record(queue_ns: int, batch_wait_ns: int, compute_ns: int, batch_size: int) -> None:
    """Record the model run that answered the current call, if its timing is wanted."""
    timing = _timing_var.get()
    if timing is not None:
        timing.queue_ns, timing.batch_wait_ns, timing.compute_ns = queue_ns, batch_wait_ns, compute_ns
        timing.batch_size = batch_size


@contextmanager
def computing(rows: int) -> Iterator[None]:
    """Record the block as the current call's compute of `rows` rows, run alone (no queue, no batch wait)."""
    timing = _timing_var.get()
    if timing is None:
        yield
        return
    started = time.perf_counter_ns()
    yield
    record(0, 0, time.perf_counter_ns() - started, rows)


def asked(value: str | bytes) -> bool:
    """True if a request's `maas-timing` metadata value asks for timing."""
    return value in ("1", "true", b"1")


def parse(entry: str) -> dict[str, str]:
    """One `maas-timing` entry as a dict (`hop`, `queue_us`, ...)."""
    return dict(part.partition("=")[::2] for part in entry.split(";") if part)
