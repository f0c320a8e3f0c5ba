"""Prometheus metrics every service exports on HTTP at its gRPC port + 1000.

Names follow Prometheus' conventions: a `maas_` prefix, base units (seconds) in the name, `_total` on
counters (prometheus_client adds it). Per-call metrics carry the model and the version that served
the call (`version` is "" when none was resolved, e.g. a refused call that named none), so a canary
is compared with its baseline by label; the batcher's metrics are per model version.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import lru_cache
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "maas_grpc_requests",
    "gRPC calls finished, by method, model, model version and status code.",
    ["method", "model", "version", "code"],
)
REQUEST_SECONDS = Histogram(
    "maas_grpc_request_duration_seconds",
    "Time from a call's arrival to its last message, by method, model and model version.",
    ["method", "model", "version"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("maas_grpc_requests_in_flight", "gRPC calls being served, by method.", ["method"])
VERSION_IN_FLIGHT = Gauge(
    "maas_model_requests_in_flight",
    "Calls being served that a model version was resolved for, by model and version (what KEDA can scale on).",
    ["model", "version"],
)


class Tally:
    """A gauge's value kept as a plain integer and read when Prometheus scrapes (`Gauge.set_function`).

    An in-flight gauge changes twice per call; a locked `Gauge.inc`/`dec` pair costs about 2 µs, an
    integer's about 0.1 µs. Only event-loop code changes a tally (the call it counts is begun and ended on
    the server's loop), so no lock is needed.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        """One more."""
        self.value += 1

    def dec(self) -> None:
        """One fewer."""
        self.value -= 1


def _tallies(gauge: Gauge) -> Callable[..., Tally]:
    """The tally of each label set of `gauge`, made (and attached to its series) on first use."""

    @lru_cache(maxsize=1024)
    def tally(*labels: str) -> Tally:
        count = Tally()
        gauge.labels(*labels).set_function(lambda: count.value)
        return count

    return tally


# Label lookups cost microseconds per call; the label sets are small (methods x served models x versions
# x codes), so each series is looked up once.
requests = lru_cache(maxsize=4096)(REQUESTS.labels)
request_seconds = lru_cache(maxsize=4096)(REQUEST_SECONDS.labels)
in_flight = _tallies(IN_FLIGHT)
version_in_flight = _tallies(VERSION_IN_FLIGHT)


SHUTDOWN_POLL_SECONDS = 0.05


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not worth a log line each."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class MetricsServer:
    """The default Prometheus registry over HTTP (`/metrics`), served from a background thread."""

    def __init__(self, host: str, port: int) -> None:
        """Bind `host:port` (0 picks a free port) and start serving.

        Raises:
            OSError: the address could not be bound.
        """
        self._httpd = make_server(host, port, make_wsgi_app(), _ThreadingServer, handler_class=_QuietHandler)
        self.port = self._httpd.server_port
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()


BATCH_ROWS = Histogram(
    "maas_batch_size",
    "Rows per model execution of the dynamic batcher, by model and version.",
    ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
QUEUE_SECONDS = Histogram(
    "maas_batch_queue_seconds",
    "Time a request waited in the dynamic batcher's queue, by model and version.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
COMPUTE_SECONDS = Histogram(
    "maas_batch_compute_seconds",
    "Time one model execution (a batch) took, by model and version.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "maas_batch_queue_depth",
    "Requests waiting in the dynamic batcher's queue, by model and version (at MAX_QUEUE_SIZE new ones are refused).",
    ["model", "version"],
)
QUEUE_LIMIT = Gauge(
    "maas_batch_queue_limit",
    "The dynamic batcher's queue size limit (MAX_QUEUE_SIZE), by model and version.",
    ["model", "version"],
)
QUEUE_FULL = Counter(
    "maas_batch_queue_full",
    "Requests refused because the batcher's queue was full (RESOURCE_EXHAUSTED), by model and version.",
    ["model", "version"],
)
SHED = Counter(
    "maas_batch_shed",
    "Requests refused because they could not meet the model's latency target (RESOURCE_EXHAUSTED), by model and "
    "version.",
    ["model", "version"],
)
CANCELLED = Counter(
    "maas_batch_cancelled",
    "Requests whose caller cancelled (or whose deadline passed) while they were queued or running, by model and "
    "version.",
    ["model", "version"],
)
MODEL_READY = Gauge(
    "maas_model_ready",
    "1 while a call naming no version would be served (a version of the model is loaded), else 0, by model.",
    ["model"],
)
MODEL_DEVICE = Gauge(
    "maas_model_version_device",
    "1 for each loaded model version, labelled with the torch device it computes on (cpu, cuda:N).",
    ["model", "version", "device"],
)
