"""The one server interceptor: request ids, drain gate, API keys, metrics, and exception -> status mapping.

Every RPC except health checks and reflection passes through it (so probes never need a key). A `MaasError` becomes its
`code` with its message as details, and its `retry_delay` and `field` become `google.rpc.RetryInfo` and
`google.rpc.BadRequest` details in a `google.rpc.Status` (trailing metadata `grpc-status-details-bin`, read by stock
`grpcio-status`: `rpc_status.from_call`); anything unexpected becomes INTERNAL "internal error" with the request id,
and the traceback goes to the log, never to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from services.common import metrics, telemetry, timing
from services.common.auth import ApiKeys
from services.common.codec import InferReply
from services.common.errors import DownstreamError, InvalidInput, MaasError
from services.common.lifecycle import Lifecycle
from services.common.logs import request_id_var

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
UNGATED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
DISCARD_SECONDS = 1.0
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass
class CallInfo:
    """What the interceptor knows about the current call; handlers may fill in `model`.

    `deadline` is the caller's deadline on the `time.monotonic()` clock (None: the caller set
    none), so that calls this one makes downstream can take what is left of it. `span` is the
    call's tracing span while tracing is on. `timing` records where the call's time went while the
    caller asked for it (`timing_asked`) or tracing is on.
    """

    method: str
    request_id: str
    model: str = ""
    version: str = ""
    version_counted: bool = False
    started: float = field(default_factory=time.perf_counter)
    deadline: float | None = None
    span: Any = None
    timing: timing.Timing | None = None
    timing_asked: bool = False


_REQUEST_ID_PREFIX = uuid.uuid4().hex[:16]
_request_counter = itertools.count(1)

_STATUS_CODES = {code.name: code for code in grpc.StatusCode}

_call_var: ContextVar[CallInfo | None] = ContextVar("maas_call", default=None)
_received_bytes: ContextVar[int | None] = ContextVar("maas_received_bytes", default=None)


def current_call() -> CallInfo | None:
    """Return the call being served in this task, or None outside an intercepted call."""
    return _call_var.get()


def received_bytes(message: Any = None) -> int:
    """The size on the wire of the request message this task received last (`message`, in a handler),
    or `message.ByteSize()` outside an intercepted call (0 without a message): measuring a large parsed
    message costs as much as serializing it again."""
    size = _received_bytes.get()
    if size is not None:
        return size
    return 0 if message is None else message.ByteSize()


def label_model(model: str) -> None:
    """Attach a model name to the current call's metrics and logs."""
    call = _call_var.get()
    if call is not None:
        call.model = model


def status_code(exc: MaasError) -> grpc.StatusCode:
    """The gRPC status a `MaasError` maps to (its `code`)."""
    return _STATUS_CODES[exc.code]


def label_version(model: str, version: str) -> None:
    """Attach the model version serving the current call to its metrics, and count the call in flight
    on that version (`maas_model_requests_in_flight`) until it finishes. The first version resolved wins.

    Args:
        model: the model the version belongs to.
        version: the version resolved for the call.
    """
    call = _call_var.get()
    if call is None or call.version_counted:
        return
    call.model, call.version, call.version_counted = call.model or model, version, True
    metrics.version_in_flight(call.model, version).inc()


def status_of(exc: Exception, call: CallInfo) -> tuple[grpc.StatusCode, str]:
    """Map an exception raised while serving `call` to the status and details a caller sees.

    A `MaasError` keeps its code and message (a downstream service's status passes through
    unchanged, INTERNAL included); NotImplementedError is UNIMPLEMENTED; anything else is logged
    with its traceback and becomes INTERNAL "internal error" with the request id.
    """
    if isinstance(exc, DownstreamError) or (isinstance(exc, MaasError) and exc.code != "INTERNAL"):
        return status_code(exc), str(exc)
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, f"{call.method} is not implemented by this service"
    log.error("unhandled error in %s", call.method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {call.request_id})"


def status_details(exc: MaasError, code: grpc.StatusCode, details: str) -> bytes | None:
    """The serialized `google.rpc.Status` that goes with `exc`'s status, or None if it has no details.

    A downstream service's status details pass through unchanged (its code and message do too).
    Otherwise: a `RetryInfo` when the error names a retry delay, and a `BadRequest` naming the field
    when it names one.

    Args:
        exc: the error the call failed with.
        code: the status code it maps to.
        details: the status message it maps to.
    """
    if isinstance(exc, DownstreamError):
        return exc.status_details
    extras: list[Any] = []
    if exc.retry_delay is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(round(exc.retry_delay * 1e9))
        extras.append(retry)
    if exc.field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=details)
        extras.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if not extras:
        return None
    status = status_pb2.Status(code=code.value[0], message=details)
    for extra in extras:
        status.details.add().Pack(extra)
    return status.SerializeToString()


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request message protobuf could not parse (e.g. invalid UTF-8 in a string)."""

    reason: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Wrap a request deserializer so a parse failure reaches the handler wrapper instead of
    becoming grpc's own INTERNAL "Exception deserializing request!"."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        _received_bytes.set(len(data))
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(str(exc) or type(exc).__name__)

    return deserialize


def _serializing_replies(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """Wrap a unary response serializer so a handler may also answer with an `InferReply`, which
    serializes itself (its outputs copied once, see `services.common.codec.InferReply`)."""
    if serializer is None:
        return None

    def serialize(message: Any) -> bytes:
        return message.SerializeToString() if isinstance(message, InferReply) else serializer(message)

    return serialize


def _parsed(method: str, message: Any) -> Any:
    if isinstance(message, _Undecodable):
        raise InvalidInput(f"{method}: the request is not a valid protobuf message ({message.reason})", field="")
    return message


class ParsedStream:
    """A request stream whose undecodable messages raise InvalidInput one by one: after the error,
    iterating goes on with the next message, so a handler may answer each bad message and carry on."""

    def __init__(self, method: str, messages: AsyncIterator[Any]) -> None:
        self._method = method
        self._messages = aiter(messages)

    def __aiter__(self) -> ParsedStream:
        return self

    async def __anext__(self) -> Any:
        return _parsed(self._method, await anext(self._messages))


async def _discard(requests: AsyncIterator[Any]) -> None:
    """Read what is left of a failed call's request stream (for at most `DISCARD_SECONDS`) before its
    status goes out: gRPC's asyncio client reports a status that arrives while it is still sending as
    INTERNAL "Internal error from Core", whatever the status was."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DISCARD_SECONDS):
            async for _ in requests:
                pass


def _request_id(metadata: Sequence[tuple[str, str | bytes]] | None) -> tuple[str, bool]:
    """The id of a call, and whether it asks for `maas-timing`.

    The id is the caller's `x-request-id` if it sent a sane one; otherwise a per-process random prefix and
    a counter, unique across processes without a system call per request.

    Args:
        metadata: the call's metadata (gRPC invocation metadata, or HTTP headers with lower-case names).
    """
    request_id, asked = "", False
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID_PATTERN.fullmatch(value):
            request_id = value
        elif key == timing.TIMING_KEY:
            asked = timing.asked(value)
    return request_id or f"{_REQUEST_ID_PREFIX}{next(_request_counter):016x}", asked


def begin_call(
    method: str, full_method: str, metadata: Sequence[tuple[str, str | bytes]] | None, remaining: float | None
) -> CallInfo:
    """Make a new call the current one of this task: its id, deadline, tracing span and in-flight gauge.

    Every call is begun here, whichever binding it came over (gRPC through the interceptor, or the
    gateway's REST binding), and ended by `end_call`.

    Args:
        method: the short method name the metrics and logs use.
        full_method: the name its span takes, e.g. `/inference.GRPCInferenceService/ModelInfer`.
        metadata: the call's metadata (its request id, trace context).
        remaining: seconds left of the caller's deadline (None: none set).

    Returns:
        The call, current for the rest of the task.
    """
    request_id, timing_asked = _request_id(metadata)
    call = CallInfo(
        method=method,
        request_id=request_id,
        deadline=None if remaining is None else time.monotonic() + remaining,
        timing_asked=timing_asked,
    )
    if telemetry.enabled():
        call.span = telemetry.start_server_span(full_method, metadata)
        call.span.set_attribute("maas.request_id", call.request_id)
    timing.arrive(time.perf_counter_ns())
    if timing_asked or call.span is not None:
        call.timing = timing.begin()
    _call_var.set(call)
    request_id_var.set(call.request_id)
    metrics.in_flight(method).inc()
    return call


def end_call(call: CallInfo, code: grpc.StatusCode, details: str = "") -> None:
    """Record how a call begun by `begin_call` ended: its span, metrics and duration.

    Args:
        call: the call.
        code: its status.
        details: the status details, for the span.
    """
    if call.span is not None:
        if call.model:
            call.span.set_attribute("maas.model", call.model)
        if call.timing is not None:
            call.span.set_attributes({f"maas.{key}": value for key, value in call.timing.attributes().items()})
        telemetry.end_span(call.span, code.name, code.value[0], details)
    metrics.in_flight(call.method).dec()
    if call.version_counted:
        metrics.version_in_flight(call.model, call.version).dec()
    metrics.requests(call.method, call.model, call.version, code.name).inc()
    metrics.request_seconds(call.method, call.model, call.version).observe(time.perf_counter() - call.started)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every gated handler: one place for ids, the drain gate, API keys, metrics and status mapping."""

    def __init__(self, lifecycle: Lifecycle, auth: ApiKeys | None = None, hop: str = "") -> None:
        """Gate calls on the server's lifecycle and, if given, on API keys.

        Args:
            lifecycle: the server's lifecycle (drain gate, calls in flight).
            auth: API keys every call must present; None: calls need none.
            hop: the service's name in `maas-timing` entries.
        """
        self._lifecycle = lifecycle
        self._auth = auth
        self._hop = hop
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method in self._wrapped:
            return self._wrapped[method]
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(UNGATED_PREFIXES):
            return handler
        self._wrapped[method] = self._wrap(handler, method)
        return self._wrapped[method]

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """The handler with every call going through this interceptor (built once per method)."""
        deserializer = _tolerant(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, streaming_request=False),
                deserializer,
                _serializing_replies(handler.response_serializer),
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method, streaming_request=True),
                deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, streaming_request=False),
                deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, method, streaming_request=True),
            deserializer,
            handler.response_serializer,
        )

    def _wrap_unary(
        self, behavior: Callable[..., Awaitable[Any]], full_method: str, streaming_request: bool
    ) -> Callable[..., Awaitable[Any]]:
        method = full_method.rsplit("/", 1)[-1]

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = self._begin(method, full_method, context)
            try:
                with self._lifecycle.admitted():
                    self._check_key(context, method)
                    parsed = ParsedStream(method, request) if streaming_request else _parsed(method, request)
                    response = await behavior(parsed, context)
            except BaseException as exc:
                if self._fail(call, exc, context):
                    if streaming_request:
                        await _discard(request)
                    return None
                raise
            if not call.version:
                call.version = getattr(response, "model_version", "")
            if call.timing_asked:
                self._timed(call, context)
            end_call(call, grpc.StatusCode.OK)
            return response

        return unary

    def _wrap_stream(
        self, behavior: Callable[..., AsyncIterator[Any]], full_method: str, streaming_request: bool
    ) -> Callable[..., Any]:
        method = full_method.rsplit("/", 1)[-1]

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = self._begin(method, full_method, context)
            try:
                with self._lifecycle.admitted():
                    self._check_key(context, method)
                    parsed = ParsedStream(method, request) if streaming_request else _parsed(method, request)
                    async for response in behavior(parsed, context):
                        yield response
            except BaseException as exc:
                if self._fail(call, exc, context):
                    if streaming_request:
                        await _discard(request)
                    return
                raise
            end_call(call, grpc.StatusCode.OK)

        return stream

    def _begin(self, method: str, full_method: str, context: grpc.aio.ServicerContext) -> CallInfo:
        call = begin_call(method, full_method, context.invocation_metadata(), context.time_remaining())
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        return call

    def _timed(self, call: CallInfo, context: grpc.aio.ServicerContext) -> None:
        """Put the call's timing in its trailing metadata (the caller asked for it)."""
        assert call.timing is not None
        total = round((time.perf_counter() - call.started) * 1e9)
        entries = (*call.timing.hops, call.timing.entry(self._hop, call.model, call.version, total))
        context.set_trailing_metadata(
            ((REQUEST_ID_KEY, call.request_id), *((timing.TIMING_KEY, entry) for entry in entries))
        )

    def _check_key(self, context: grpc.aio.ServicerContext, method: str) -> None:
        if self._auth is not None:
            self._auth.check(context.invocation_metadata(), method)

    def _fail(self, call: CallInfo, exc: BaseException, context: grpc.aio.ServicerContext) -> bool:
        """Record the call's outcome and set the status `exc` maps to.

        The status is set on the context and the handler returns, rather than raising it through
        `context.abort()`, which costs a refused call about a sixth more of the server's time.

        Returns:
            True if the status is set and the handler should return; False if `exc` must propagate
            (the call was cancelled, the handler aborted it itself, or the process is exiting).
        """
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            end_call(call, grpc.StatusCode.CANCELLED)
            return False
        if isinstance(exc, grpc.aio.AbortError):
            end_call(call, context.code() or grpc.StatusCode.UNKNOWN)
            return False
        code, details = status_of(exc, call)
        end_call(call, code, details)
        if not isinstance(exc, Exception):
            return False
        trailing = ((REQUEST_ID_KEY, call.request_id),)
        if isinstance(exc, MaasError):
            trailing += exc.trailing_metadata()
            rich = status_details(exc, code, details)
            if rich is not None:
                trailing += ((STATUS_DETAILS_KEY, rich),)
        context.set_code(code)
        context.set_details(details)
        context.set_trailing_metadata(trailing)
        return True
