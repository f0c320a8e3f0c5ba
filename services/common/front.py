"""The native gRPC front (setting `front=native`): a C++ server on the service's port, Python once per batch.

The C++ server (`services/common/native/front.cc`, built by `make native`) owns the public port and the
service's grpc.aio server moves to a loopback port behind it. A ModelInfer call for a routed model version
that carries only raw tensors of the declared datatypes and fixed shapes queues in C++; one Python thread
per route takes the queued calls as one batch, runs the version's `prepare` and `predict` once, and hands
the outputs back, which C++ splits into one response per call (with a `maas-timing` entry for a call that
asks for one). Everything else is proxied byte for byte to the Python server, which answers it as it would
without the front. See docs/native-front.md.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np

from services.common import metrics
from services.common.batchcost import BatchCost, Steer
from services.common.codec import FIXED_DTYPES
from services.common.errors import MaasError, ModelNotFound, ModelNotReady
from services.common.settings import ServiceSettings
from services.common.timing import Timing
from services.common.versions import ModelRegistry, ModelVersions

log = logging.getLogger(__name__)

TAKE_TIMEOUT_US = 100_000
"""How long a pump waits for a call before it looks again whether the front is stopping."""
IDLE_POLL_SECONDS = 0.005
"""How often a drain looks whether the calls queued here are answered (a count in C++, no event to await)."""
METHOD = "ModelInfer"


CLASHING_MODULES = ("grpc_tools._protoc_compiler",)
"""Extensions that carry their own C++ protobuf and export its process-wide (GNU unique) symbols: the
front's libprotobuf would bind to their copies of its globals, of another protobuf version's layout, and
abort or crash the process when it loads."""


def load_extension():
    """The compiled front, `services.common.native._front`.

    Raises:
        RuntimeError: it is not built (`make native`), or the process has loaded one of
            `CLASHING_MODULES` (grpcio-tools' protoc).
    """
    clashing = [name for name in CLASHING_MODULES if name in sys.modules]
    if clashing:
        raise RuntimeError(
            f"front=native cannot load in a process that has loaded {', '.join(clashing)}: its C++ protobuf "
            "clashes with the front's; run protoc in a process of its own"
        )
    try:
        from services.common.native import _front
    except ImportError as exc:
        raise RuntimeError(f"front=native needs the compiled front: run `make native` ({exc})") from None
    return _front


def routable(model: ModelVersions) -> bool:
    """Whether the front can answer `model`'s requests itself: it batches, and every input is a required
    tensor of a fixed-size datatype whose dimensions past the batch one are fixed."""
    if not model.batch_limits().dynamic or not model.inputs or not model.outputs:
        return False
    tensors = (*model.inputs, *model.outputs)
    if any(spec.datatype not in FIXED_DTYPES for spec in tensors):
        return False
    return all(not spec.optional and all(dim >= 0 for dim in spec.shape[1:]) for spec in model.inputs)


@dataclass(frozen=True)
class _Route:
    handle: int
    model: ModelVersions
    version: str
    batch_rows: metrics.Histogram
    compute_seconds: metrics.Histogram
    queue_seconds: metrics.Histogram
    shed: metrics.Counter
    queue_full: metrics.Counter
    target_ns: int
    cost: BatchCost
    steer: Steer


class NativeFront:
    """The C++ server on a service's port, proxying to its Python server, and the pumps of its routes."""

    def __init__(self, settings: ServiceSettings, address: str, upstream_port: int, hop: str) -> None:
        """Bind `address` and start serving, proxying every call to the Python server until routes are added.

        Args:
            settings: the service's settings (message limit, connection age, batching).
            address: the public address to bind.
            upstream_port: the Python server's loopback port.
            hop: the service's name, in the `maas-timing` entries of the calls answered here.

        Raises:
            RuntimeError: the extension is not built, or `address` could not be bound.
        """
        self._settings = settings
        self._native = load_extension()
        self._front = self._native.Front(
            address=address,
            upstream=f"127.0.0.1:{upstream_port}",
            max_message_bytes=settings.max_message_bytes,
            max_connection_age_ms=round(settings.max_connection_age_s * 1000),
            max_connection_age_grace_ms=round(settings.max_connection_age_grace_s * 1000),
            max_streams=settings.front_max_streams,
            id_prefix=uuid.uuid4().hex[:16],
        )
        self._hop = hop
        self._pumps: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._answered = 0
        self._answered_lock = threading.Lock()

    @property
    def port(self) -> int:
        """The public port bound."""
        return self._front.port

    @property
    def answered(self) -> int:
        """Calls answered here so far (the others went to the Python server)."""
        return self._answered

    def route(self, models: ModelRegistry) -> list[str]:
        """Answer the routable models' requests here: one route per version loaded now, each with one pump
        thread (so one predict per version at a time, as on the Python path); requests naming no version
        ("") go to the route of the default version at this moment. With a latency target
        (`max_latency_ms`), each route holds its calls to it as the batcher does: it learns its batches'
        cost, and the C++ side refuses a call at arrival that the work ahead would make late, and drops
        one that waited too long to end in time (RESOURCE_EXHAUSTED with a retry delay).

        Args:
            models: the service's models.

        Returns:
            The routes, as `model:version`, the default's followed by " (default)".
        """
        routes: list[str] = []
        target_ns = round(getattr(self._settings, "max_latency_ms", 0) * 1e6)
        for model in models:
            if not routable(model):
                continue
            inputs = [(s.name, s.datatype, list(s.shape[1:])) for s in model.inputs]
            outputs = [(s.name, s.datatype, []) for s in model.outputs]
            limits = model.batch_limits()
            default = model.get("").version if model.is_ready() else None
            for entry in model.index():
                if entry.state != "READY":
                    continue
                version = entry.version
                names = [version, ""] if version == default else [version]
                handle = self._front.register(
                    model.name, names, inputs, outputs, limits.max_batch_size, self._settings.max_queue_size, target_ns
                )
                labels = (model.name, version)
                route = _Route(
                    handle,
                    model,
                    version,
                    metrics.BATCH_ROWS.labels(*labels),
                    metrics.COMPUTE_SECONDS.labels(*labels),
                    metrics.QUEUE_SECONDS.labels(*labels),
                    metrics.SHED.labels(*labels),
                    metrics.QUEUE_FULL.labels(*labels),
                    target_ns,
                    BatchCost(),
                    Steer(),
                )
                pump = threading.Thread(
                    target=self._pump,
                    args=(route, limits.max_batch_size),
                    name=f"front-{model.name}:{version}",
                    daemon=True,
                )
                pump.start()
                self._pumps.append(pump)
                routes.append(f"{model.name}:{version}" + (" (default)" if version == default else ""))
        return routes

    def drain(self) -> None:
        """Answer nothing more here: from now on every call goes to the Python server (which refuses new
        ones while it drains); the calls queued here are still answered."""
        self._front.drain()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until no call is queued or being answered here; True if none is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if not self._front.in_flight:
                return True
            await asyncio.sleep(IDLE_POLL_SECONDS)
        return not self._front.in_flight

    def stop(self, grace: float) -> None:
        """Stop accepting calls, let those in flight finish within `grace` seconds, then stop the pumps.
        Blocks: call it off the event loop."""
        self._front.shutdown(grace)
        self._stopping.set()
        for pump in self._pumps:
            pump.join()

    def _pump(self, route: _Route, max_rows: int) -> None:
        """Take batches of the route's calls and answer them until the front stops."""
        front, model = self._front, route.model
        dtypes = [FIXED_DTYPES[spec.datatype] for spec in model.outputs]
        while True:
            taken = front.take(route.handle, max_rows, TAKE_TIMEOUT_US)
            self._count_dropped(route)
            if taken is None:
                if self._stopping.is_set():
                    return
                continue
            batch, counts, arrived = taken
            del taken
            taken_ns = time.monotonic_ns()
            try:
                arrays = self._inputs(batch, model, sum(counts))
                try:
                    loaded = model.get(route.version)
                except (ModelNotFound, ModelNotReady) as exc:
                    log.warning("native front: %s; the Python server answers its calls", exc)
                    self._native.fallback(batch, range(len(batch)))
                    continue
                instance = loaded.model
                batch, arrays, counts, arrived = self._prepared(instance, batch, arrays, counts, arrived)
                if not counts:
                    continue
                started = time.perf_counter_ns()
                outputs = instance.predict(arrays)
                compute_ns = time.perf_counter_ns() - started
                done_ns = time.monotonic_ns()
                results = [
                    np.ascontiguousarray(outputs[spec.name], dtype)
                    for spec, dtype in zip(model.outputs, dtypes, strict=True)
                ]
                rows = sum(counts)
                self._record(route, loaded.stats, counts, arrived, rows, taken_ns, done_ns, compute_ns)
                if route.target_ns:
                    self._learn(route, rows, compute_ns)
                timings = self._timings(batch, arrived, rows, taken_ns, compute_ns, loaded.version, model.name)
                self._native.reply(batch, loaded.version, results, timings)
            except Exception:
                log.exception(
                    "native front: %s:%s failed a batch; the Python server answers it", model.name, route.version
                )
                if not batch.settled:
                    self._native.fallback(batch, range(len(batch)))
            finally:
                del batch

    def _timings(self, batch, arrived, rows: int, taken_ns: int, compute_ns: int, version: str, model: str):
        """The `maas-timing` entries of the batch's calls that asked for one, by index: the grpc.aio server's
        entry (`Timing.entry`), with no batch wait (a route never holds a batch open for batch-mates)."""
        timed = batch.timed
        if not timed:
            return {}
        now = time.monotonic_ns()
        return {
            index: Timing(queue_ns=taken_ns - arrived[index], compute_ns=compute_ns, batch_size=rows).entry(
                self._hop, model, version, now - arrived[index]
            )
            for index in timed
        }

    @staticmethod
    def _inputs(batch, model: ModelVersions, rows: int) -> dict[str, np.ndarray]:
        """The batch's inputs, each its calls' raw contents one after another (one copy)."""
        arrays = {}
        for slot, spec in enumerate(model.inputs):
            array = np.empty((rows, *spec.shape[1:]), FIXED_DTYPES[spec.datatype])
            batch.fill(slot, array)
            arrays[spec.name] = array
        return arrays

    def _prepared(self, instance, batch, arrays, counts, arrived):
        """The batch's inputs through the model's `prepare`, checked as one; a batch that fails is prepared
        call by call (a model may refuse a batch larger than one request may be, as the vision model's
        `max_images` does), the calls that fail go to the Python server, which refuses them itself, and the
        others' prepared inputs are put back together."""
        prepare = getattr(instance, "prepare", None)
        if prepare is None:
            return batch, arrays, counts, arrived
        try:
            return batch, prepare(arrays, {}), counts, arrived
        except MaasError:
            pass
        bad, kept, parts, offset = [], [], [], 0
        for index, rows in enumerate(counts):
            part = {name: array[offset : offset + rows] for name, array in arrays.items()}
            offset += rows
            try:
                parts.append(prepare(part, {}))
            except MaasError:
                bad.append(index)
                continue
            kept.append(index)
        if kept:
            arrays = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        return self._native.fallback(batch, bad), arrays, [counts[i] for i in kept], [arrived[i] for i in kept]

    def _record(
        self,
        route: _Route,
        stats,
        counts: list[int],
        arrived: list[int],
        rows: int,
        taken_ns: int,
        done_ns: int,
        compute_ns: int,
    ) -> None:
        """Record a batch of `rows` rows (its calls' `counts`) as the Python path does (v2 statistics and
        Prometheus series), before its calls are answered, so that a caller who has its answer finds it
        counted."""
        name, version = route.model.name, route.version
        stats.record_execution(rows, compute_ns)
        route.batch_rows.observe(rows)
        route.compute_seconds.observe(compute_ns / 1e9)
        request_seconds = metrics.request_seconds(METHOD, name, version)
        for count, arrival in zip(counts, arrived, strict=True):
            stats.record_compute(taken_ns - arrival, compute_ns)
            stats.record_request(True, done_ns - arrival, count)
            route.queue_seconds.observe((taken_ns - arrival) / 1e9)
            request_seconds.observe((done_ns - arrival) / 1e9)
        metrics.requests(METHOD, name, version, "OK").inc(len(counts))
        with self._answered_lock:
            self._answered += len(counts)

    def _learn(self, route: _Route, rows: int, compute_ns: int) -> None:
        """Fit the route's batch cost (as the batcher does, `BatchCost`) and steer how much admission forgives
        of what it adds to the fit's prediction (its margin, and the time the route's calls now take to be
        written) by how many of the calls answered since were written after the target (`Steer`), and hand
        both to the C++ side, which admits calls by them: before the batch is answered, so that its callers'
        next calls meet the cost it taught."""
        route.cost.observe(rows, compute_ns)
        margin = route.cost.margin_ns()
        late, in_time = self._front.written(route.handle)
        route.steer.count(late, in_time, route.target_ns, margin + self._front.write_ns(route.handle))
        if route.cost.ready:
            fixed, per_row = route.cost.line()
            self._front.set_cost(route.handle, fixed, per_row, margin, route.steer.forgiven_ns)

    def _count_dropped(self, route: _Route) -> None:
        cancelled, expired, shed, full = self._front.dropped(route.handle)
        if cancelled or expired or shed or full:
            name, version = route.model.name, route.version
            metrics.requests(METHOD, name, version, "CANCELLED").inc(cancelled)
            metrics.requests(METHOD, name, version, "DEADLINE_EXCEEDED").inc(expired)
            metrics.requests(METHOD, name, version, "RESOURCE_EXHAUSTED").inc(shed + full)
            route.shed.inc(shed)
            route.queue_full.inc(full)
