"""Client channels to other maas services: one long-lived channel per target, deadlines, errors.

A channel resolves its target (`dns:///host:port`) to every address and spreads calls over them
with round_robin, so a headless Kubernetes Service spreads load over every pod (gRPC keeps its
connections open, so kube-proxy alone would pin a client to one pod). Every call takes its timeout
from what is left of the deadline of the call being served, carries its request id and trace
context, and translates a failure once, into `DownstreamError` with the status unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from services.common import telemetry
from services.common.errors import DownstreamError
from services.common.interceptor import REQUEST_ID_KEY, current_call

S = TypeVar("S")

KEEPALIVE_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Options of a long-lived channel to a maas service: round_robin over every resolved address,
    keepalive pings so dead connections are noticed, and the service message limits."""
    return [
        ("grpc.lb_policy_name", "round_robin"),
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

    def __init__(self, name: str, target: str, max_message_bytes: int, default_timeout: float) -> None:
        """Open a channel to `target`, connecting lazily.

        Args:
            name: the target's name, for errors and logs (e.g. `tokenizer`).
            target: a gRPC target, e.g. `dns:///tokenizer.maas.svc:50052`.
            max_message_bytes: largest message sent or received.
            default_timeout: timeout of calls made while serving a call without a deadline.
        """
        self.name = name
        self.target = target
        self.channel = grpc.aio.insecure_channel(target, options=channel_options(max_message_bytes))
        self._default_timeout = default_timeout
        self._stubs: dict[type, Any] = {}

    def stub(self, stub_class: Callable[[grpc.aio.Channel], S]) -> S:
        """The stub of one service on this channel (made once)."""
        if stub_class not in self._stubs:
            self._stubs[stub_class] = stub_class(self.channel)
        return self._stubs[stub_class]

    async def call(self, rpc: Callable[..., Awaitable[Any]], request: Any, method: str) -> Any:
        """Make one unary call with the rest of the caller's deadline, its request id and trace.

        Args:
            rpc: a unary method of a stub from `stub`.
            request: the request message.
            method: the full method name, `/package.Service/Method`, for the trace.

        Returns:
            The response message.

        Raises:
            DownstreamError: the call failed; it carries the status code and details unchanged.
        """
        metadata: list[tuple[str, str]] = []
        call = current_call()
        if call is not None:
            metadata.append((REQUEST_ID_KEY, call.request_id))
        timeout = remaining_seconds(self._default_timeout)
        with telemetry.client_span(method, self.name, metadata) as span:
            try:
                return await rpc(request, timeout=timeout, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                if span is not None:
                    span.set_attribute("rpc.grpc.status_code", exc.code().value[0])
                raise DownstreamError(exc.code(), exc.details() or exc.code().name, self.name) from None

    async def close(self) -> None:
        """Close the channel; calls in flight on it are cancelled."""
        await self.channel.close()
