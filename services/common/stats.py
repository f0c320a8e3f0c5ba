"""Per-version inference statistics, as v2 ModelStatistics reports them."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from maas.inference import grpc_service_pb2 as pb


@dataclass
class Duration:
    """A count of events and their total duration."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        """Record `count` events lasting `ns` nanoseconds together."""
        self.count += count
        self.ns += ns

    def to_proto(self) -> pb.StatisticDuration:
        """As a v2 StatisticDuration."""
        return pb.StatisticDuration(count=self.count, ns=self.ns)


@dataclass
class VersionStats:
    """Counters of one model version. Thread-safe: batches finish on worker threads.

    As Triton counts them, queue and compute durations are per request (a request's compute is the
    run of the batch it was in), and batch statistics per execution. A request's queue and compute are
    recorded when it gets its rows, and its input and output when it is answered, with no await in
    between: read on the event loop, the compute input, infer and output counts agree (perf_analyzer
    stops if they do not), unless a request failed after its model ran.
    """

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=dict)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    in_flight: int = 0
    """Requests of this version being served now (counted on the event loop by whoever serves them)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_request(self, ok: bool, ns: int, items: int, input_ns: int = 0, output_ns: int = 0) -> None:
        """A request finished: `items` rows inferred (if ok) in `ns` nanoseconds end to end, of which
        `input_ns` went to decoding its inputs and `output_ns` to encoding its outputs."""
        with self._lock:
            if ok:
                self.success.add(ns)
                self.compute_input.add(input_ns)
                self.compute_output.add(output_ns)
                self.inference_count += items
                self.last_inference_ms = time.time_ns() // 1_000_000
            else:
                self.fail.add(ns)

    def record_compute(self, queue_ns: int, compute_ns: int) -> None:
        """A request got its rows: it waited `queue_ns` (0 if it never queued) and the run that computed
        them took `compute_ns`."""
        with self._lock:
            self.queue.add(queue_ns)
            self.compute.add(compute_ns)

    def record_execution(self, batch_size: int, compute_ns: int) -> None:
        """The model ran once on `batch_size` rows in `compute_ns`."""
        with self._lock:
            self.execution_count += 1
            self.batches.setdefault(batch_size, Duration()).add(compute_ns)

    def to_proto(self, name: str, version: str) -> pb.ModelStatistics:
        """As a v2 ModelStatistics entry."""
        with self._lock:
            return pb.ModelStatistics(
                name=name,
                version=version,
                last_inference=self.last_inference_ms,
                inference_count=self.inference_count,
                execution_count=self.execution_count,
                inference_stats=pb.InferStatistics(
                    success=self.success.to_proto(),
                    fail=self.fail.to_proto(),
                    queue=self.queue.to_proto(),
                    compute_input=self.compute_input.to_proto(),
                    compute_infer=self.compute.to_proto(),
                    compute_output=self.compute_output.to_proto(),
                ),
                batch_stats=[
                    pb.InferBatchStatistics(batch_size=size, compute_infer=duration.to_proto())
                    for size, duration in sorted(self.batches.items())
                ],
            )
