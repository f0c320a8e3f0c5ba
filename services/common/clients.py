"""Client channels to other maas services: one long-lived channel per target, deadlines, errors.

A channel resolves its target (`dns:///host:port`) to every address and spreads calls over them
with round_robin, so a headless Kubernetes Service spreads load over every pod (gRPC keeps its
connections open, so kube-proxy alone would pin a client to one pod). Each address's connection is
health-checked (`grpc.health.v1`, service ""), so a replica that is draining or loading gets no new
calls, and a lost connection is re-dialled with a short backoff, so a replica that comes back gets
calls again within about a second. gRPC resolves the name again only when a connection closes, so
the servers age their connections (`max_connection_age_s`) and a replica added behind the name gets
calls within one connection age. Every call takes its timeout from what is left of the deadline of
the call being served, carries its request id and trace context, and translates a failure once, into
`DownstreamError` with the status unchanged and whether the call surely did not run downstream. The
one status changed is CANCELLED, which a call cancelled here never gets (it raises
`asyncio.CancelledError`): the target dropped the call (it was stopping), which is UNAVAILABLE to the
caller, who cancelled nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from services.common import telemetry, timing
from services.common.errors import NOT_RUN_KEY, DownstreamError, NotRun
from services.common.interceptor import REQUEST_ID_KEY, STATUS_DETAILS_KEY, current_call
from services.common.tls import ClientTls, aio_channel

S = TypeVar("S")

KEEPALIVE_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
RECONNECT_BACKOFF_MS = 100
MAX_RECONNECT_BACKOFF_MS = 1_000
MIN_RESOLUTION_INTERVAL_MS = 30_000
SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}})
UNREACHABLE_DETAILS = ("connections to all backends failing", "DNS resolution failed")
"""How gRPC's round_robin and resolver word a call they failed before sending it: no address was
connected and healthy, or the name did not resolve. gRPC gives the application no structured flag
for "never sent", and these are the statuses its own load balancer and resolver produce, so the
words are the signal; a contract test pins them."""
UNREACHABLE_PREFIX = "cannot reach the service serving this model, target"
"""How the details of a call that could not be sent begin (gRPC's own words follow, in parentheses)."""


def channel_options(
    max_message_bytes: int,
    max_reconnect_backoff_ms: int = MAX_RECONNECT_BACKOFF_MS,
    min_resolution_interval_ms: int = MIN_RESOLUTION_INTERVAL_MS,
) -> list[tuple[str, Any]]:
    """Options of a long-lived channel to a maas service: round_robin over every resolved address
    that is connected and reports SERVING, short reconnect backoff (gRPC's default grows to 120 s),
    keepalive pings so dead connections are noticed, and the service message limits.

    Args:
        max_message_bytes: largest message sent or received.
        max_reconnect_backoff_ms: longest wait between attempts to re-dial a lost address.
        min_resolution_interval_ms: shortest time between two resolutions of a `dns:` target (gRPC
            resolves again when a connection closes, e.g. when a server ages it).
    """
    return [
        ("grpc.service_config", SERVICE_CONFIG),
        ("grpc.initial_reconnect_backoff_ms", min(RECONNECT_BACKOFF_MS, max_reconnect_backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", max_reconnect_backoff_ms),
        ("grpc.dns_min_time_between_resolutions_ms", min_resolution_interval_ms),
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def remaining_seconds(default: float) -> float:
    """Seconds left of the served call's deadline (at least 0), or `default` if it has none.

    Args:
        default: the timeout to use outside a call, or when the caller set no deadline.
    """
    call = current_call()
    if call is None or call.deadline is None:
        return default
    return max(0.0, call.deadline - time.monotonic())


class Downstream:
    """One named target and its long-lived channel; every call to it goes through `call`."""

    def __init__(
        self,
        name: str,
        target: str,
        max_message_bytes: int,
        default_timeout: float,
        max_reconnect_backoff_ms: int = MAX_RECONNECT_BACKOFF_MS,
        metadata: tuple[tuple[str, str], ...] = (),
        min_resolution_interval_ms: int = MIN_RESOLUTION_INTERVAL_MS,
        tls: ClientTls | None = None,
        tls_stamp: object = None,
    ) -> None:
        """Open a channel to `target`, connecting lazily.

        Args:
            name: the target's name, for errors and logs (e.g. `tokenizer`).
            target: a gRPC target, e.g. `dns:///tokenizer.maas.svc:50052`.
            max_message_bytes: largest message sent or received.
            default_timeout: timeout of calls made while serving a call without a deadline.
            max_reconnect_backoff_ms: longest wait between attempts to re-dial a lost address.
            metadata: sent with every call (e.g. Serve's `application` for its gRPC proxy).
            min_resolution_interval_ms: shortest time between two resolutions of a `dns:` target.
            tls: the CA to trust and the certificate to present; None or no files: plaintext.
            tls_stamp: what the TLS files looked like when read (kept in `tls_stamp`, to notice a rotation).

        Raises:
            TlsFilesError: a TLS file cannot be used.
        """
        self.name = name
        self.target = target
        self.metadata = metadata
        self.tls_stamp = tls_stamp
        self.tls = tls is not None and tls.enabled
        self.channel = aio_channel(
            target,
            tls or ClientTls(),
            channel_options(max_message_bytes, max_reconnect_backoff_ms, min_resolution_interval_ms),
        )
        self._default_timeout = default_timeout
        self._stubs: dict[type, Any] = {}
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def stub(self, stub_class: Callable[[grpc.aio.Channel], S]) -> S:
        """The stub of one service on this channel (made once)."""
        if stub_class not in self._stubs:
            self._stubs[stub_class] = stub_class(self.channel)
        return self._stubs[stub_class]

    async def call(
        self, rpc: Callable[..., Awaitable[Any]], request: Any, method: str, timeout: float | None = None
    ) -> Any:
        """Make one unary call with the rest of the caller's deadline, its request id and trace.

        Args:
            rpc: a unary method of a stub from `stub`.
            request: the request message.
            method: the full method name, `/package.Service/Method`, for the trace.
            timeout: at most this many seconds, even if the caller's deadline leaves more.

        Returns:
            The response message.

        Raises:
            DownstreamError: the call failed; it carries the status code and details unchanged (but
                CANCELLED, which the target's dropping the call is, becomes UNAVAILABLE), and `not_run`
                when the call surely did not run downstream.
        """
        metadata: list[tuple[str, str]] = list(self.metadata)
        call = current_call()
        timed = call.timing if call is not None else None
        if call is not None:
            metadata.append((REQUEST_ID_KEY, call.request_id))
            if call.timing_asked:
                metadata.append((timing.TIMING_KEY, "1"))
        left = remaining_seconds(self._default_timeout)
        self._in_flight += 1
        self._idle.clear()
        started = time.perf_counter_ns()
        try:
            with telemetry.client_span(method, self.name, metadata) as span:
                try:
                    pending = rpc(request, timeout=left if timeout is None else min(left, timeout), metadata=metadata)
                    return await (pending if timed is None else self._timed(pending, timed))
                except grpc.aio.AioRpcError as exc:
                    if span is not None:
                        span.set_attribute("rpc.grpc.status_code", exc.code().value[0])
                    details = exc.details() or exc.code().name
                    if exc.code() is grpc.StatusCode.CANCELLED:
                        details = f"{self.name} dropped the call ({details})"
                        raise DownstreamError(grpc.StatusCode.UNAVAILABLE, details, self.name) from None
                    not_run = _not_run(exc, details)
                    if not_run is NotRun.UNREACHABLE:
                        details = f"{UNREACHABLE_PREFIX} '{self.name}' ({details})"
                    raise DownstreamError(exc.code().name, details, self.name, not_run, _status_details(exc)) from None
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
            if timed is not None:
                timed.downstream_ns += time.perf_counter_ns() - started

    @staticmethod
    async def _timed(pending: Any, timed: timing.Timing) -> Any:
        """The response of a call whose caller wants timing: the hops' `maas-timing` entries are kept."""
        response = await pending
        for key, value in await pending.trailing_metadata() or ():
            if key == timing.TIMING_KEY:
                timed.hops.append(value)
        return response

    async def close(self, grace: float = 0.0) -> None:
        """Close the channel once its calls in flight finish, waiting at most `grace` seconds; calls
        still in flight then are cancelled.

        Args:
            grace: seconds to wait for calls in flight.
        """
        if grace:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        await self.channel.close()


def _status_details(error: grpc.aio.AioRpcError) -> bytes | None:
    """The `google.rpc.Status` a failed call carried in its trailing metadata, if any."""
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def _not_run(error: grpc.aio.AioRpcError, details: str) -> NotRun | None:
    """Why a failed call surely did not run downstream, or None if it may have run."""
    if error.code() is not grpc.StatusCode.UNAVAILABLE:
        return None
    if any(key == NOT_RUN_KEY for key, _value in error.trailing_metadata() or ()):
        return NotRun.REFUSED
    if details.startswith(UNREACHABLE_DETAILS):
        return NotRun.UNREACHABLE
    return None
