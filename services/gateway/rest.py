"""The gateway's REST binding of the Open Inference Protocol: HTTP/1.1 on starlette, served by uvicorn on
the gateway's own event loop, beside gRPC.

Every route calls the gateway's v2 servicer, so HTTP reaches every model and pipeline the gateway
routes, with the same routing, API keys, drain gate, metrics and traces as gRPC. A refused call's gRPC
status becomes the HTTP status KServe's server maps it to (INVALID_ARGUMENT 400, NOT_FOUND 404,
UNAVAILABLE 503, UNIMPLEMENTED 501, INTERNAL 500), and the codes KServe has no error for follow
`google.rpc.Code`'s HTTP mapping (UNAUTHENTICATED 401, RESOURCE_EXHAUSTED 429, DEADLINE_EXCEEDED 504);
the body is `{"error": "<details>"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import zlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from maas.inference import grpc_service_pb2 as pb
from services.common.auth import ApiKeys
from services.common.codec import as_message
from services.common.errors import InvalidInput, MaasError, ModelNotReady
from services.common.interceptor import REQUEST_ID_KEY, begin_call, end_call, status_of
from services.common.lifecycle import Lifecycle
from services.common.v2 import SERVICE_NAME
from services.gateway.rest_codec import HEADER_LENGTH, encode_infer, parse_infer, to_json

log = logging.getLogger(__name__)

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
"""gRPC status -> HTTP status; anything else (INTERNAL, UNKNOWN, DATA_LOSS) is 500."""
PAYLOAD_TOO_LARGE = 413
DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""Content-Encoding -> zlib window bits (tritonclient's request compression)."""
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
STOP_GRACE_SECONDS = 1.0
STARTUP_POLL_SECONDS = 0.005


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status a gRPC status code maps to (see the module's docstring)."""
    return HTTP_STATUS.get(code, 500)


class BodyTooLarge(Exception):
    """A request body (after decompression) over the gateway's message limit."""


def _error(status: int, message: str, request_id: str) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers={REQUEST_ID_KEY: request_id})


class RestBinding:
    """The REST routes over a v2 servicer, gated like gRPC calls."""

    def __init__(self, servicer: Any, lifecycle: Lifecycle, auth: ApiKeys | None, max_body_bytes: int) -> None:
        """Args:
        servicer: the gateway's `inference.GRPCInferenceService` servicer (its handlers ignore their context).
        lifecycle: the server's lifecycle (drain gate, calls in flight, readiness).
        auth: API keys every call but health checks must present (`Authorization: Bearer <key>`); None: none.
        max_body_bytes: largest request body, decompressed; larger is 413.
        """
        self._v2 = servicer
        self._lifecycle = lifecycle
        self._auth = auth
        self._max_body = max_body_bytes

    def app(self) -> Starlette:
        """The ASGI application."""
        model = "/v2/models/{name}"
        version = "/v2/models/{name}/versions/{version}"
        routes = [
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/v2/models/stats", self.statistics, methods=["GET"]),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
        ]
        for prefix in (model, version):
            routes += [
                Route(prefix, self.model_metadata, methods=["GET"]),
                Route(f"{prefix}/ready", self.model_ready, methods=["GET"]),
                Route(f"{prefix}/infer", self.infer, methods=["POST"]),
                Route(f"{prefix}/stats", self.statistics, methods=["GET"]),
            ]
        return Starlette(routes=routes, exception_handlers={HTTPException: self._no_route})

    async def _no_route(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = f"{request.method} {request.url.path}: {exc.detail}; the Open Inference Protocol routes are /v2/..."
        return JSONResponse({"error": message}, exc.status_code)

    async def live(self, request: Request) -> Response:
        """`GET /v2/health/live`: 200 while the process serves HTTP at all."""
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        """`GET /v2/health/ready`: 200 once the gateway serves, 503 while starting or draining."""
        if not self._lifecycle.ready:
            return JSONResponse({"error": "the gateway is not ready (starting or shutting down)"}, 503)
        return JSONResponse({"ready": True})

    async def server_metadata(self, request: Request) -> Response:
        """`GET /v2`: name, version and extensions."""
        return await self._call(request, "ServerMetadata", self._json("ServerMetadata", pb.ServerMetadataRequest()))

    async def model_metadata(self, request: Request) -> Response:
        """`GET /v2/models/{name}[/versions/{version}]`."""
        name, version = request.path_params["name"], request.path_params.get("version", "")
        message = pb.ModelMetadataRequest(name=name, version=version)
        return await self._call(request, "ModelMetadata", self._json("ModelMetadata", message))

    async def model_ready(self, request: Request) -> Response:
        """`GET /v2/models/{name}[/versions/{version}]/ready`: 200 if ready, 503 if not, 404 if unknown."""
        name, version = request.path_params["name"], request.path_params.get("version", "")

        async def handle() -> Response:
            answer = await self._v2.ModelReady(pb.ModelReadyRequest(name=name, version=version), None)
            if not answer.ready:
                what = f"model '{name}'" + (f" version {version}" if version else "")
                raise ModelNotReady(f"{what} is not ready")
            return JSONResponse({"name": name, "ready": True})

        return await self._call(request, "ModelReady", handle)

    async def statistics(self, request: Request) -> Response:
        """`GET /v2/models[/{name}[/versions/{version}]]/stats`."""
        message = pb.ModelStatisticsRequest(
            name=request.path_params.get("name", ""), version=request.path_params.get("version", "")
        )
        return await self._call(request, "ModelStatistics", self._json("ModelStatistics", message))

    async def repository_index(self, request: Request) -> Response:
        """`POST /v2/repository/index` (body `{"ready": true}` lists ready versions only): a JSON list."""

        async def handle() -> Response:
            body = await self._body(request)
            document = _json_body(body) if body.strip() else {}
            ready = isinstance(document, dict) and document.get("ready") is True
            answer = await self._v2.RepositoryIndex(pb.RepositoryIndexRequest(ready=ready), None)
            return JSONResponse([to_json(model) for model in answer.models])

        return await self._call(request, "RepositoryIndex", handle)

    async def infer(self, request: Request) -> Response:
        """`POST /v2/models/{name}[/versions/{version}]/infer`: JSON tensors and binary tensor data."""
        name, version = request.path_params["name"], request.path_params.get("version", "")

        async def handle() -> Response:
            header = request.headers.get(HEADER_LENGTH)
            if header is not None and not header.isdigit():
                raise InvalidInput(f"Inference-Header-Content-Length must be a byte count, got '{header[:32]}'")
            call = parse_infer(await self._body(request), None if header is None else int(header), name, version)
            body, json_length = encode_infer(call, as_message(await self._v2.ModelInfer(call.request, None)))
            if json_length is None:
                return Response(body, media_type=JSON_TYPE)
            return Response(body, media_type=BINARY_TYPE, headers={HEADER_LENGTH: str(json_length)})

        return await self._call(request, "ModelInfer", handle)

    def _json(self, method: str, message: Any) -> Callable[[], Awaitable[Response]]:
        async def handle() -> Response:
            return JSONResponse(to_json(await getattr(self._v2, method)(message, None)))

        return handle

    async def _body(self, request: Request) -> bytes:
        """The request body, decompressed, refused past the limit before it is all read."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_body:
            raise BodyTooLarge(f"the request body is {declared} bytes; the limit is {self._max_body}")
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", *DECODERS):
            raise InvalidInput(f"Content-Encoding '{encoding[:32]}' is not supported; send gzip, deflate or none")
        decoder = zlib.decompressobj(DECODERS[encoding]) if encoding in DECODERS else None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            if decoder is not None:
                try:
                    chunk = decoder.decompress(chunk, self._max_body + 1 - size)
                except zlib.error:
                    raise InvalidInput(f"the request body is not valid {encoding} data") from None
                if decoder.unconsumed_tail:
                    size = self._max_body + 1
            size += len(chunk)
            if size > self._max_body:
                raise BodyTooLarge(f"the request body is over the limit of {self._max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _call(self, request: Request, method: str, handle: Callable[[], Awaitable[Response]]) -> Response:
        """Serve one call the way the gRPC interceptor serves one: request id, drain gate, API key,
        metrics and trace; a refusal becomes its HTTP status with the details as `error`."""
        headers = request.headers.items()
        call = begin_call(f"http:{method}", f"/{SERVICE_NAME}/{method}", headers, None)
        try:
            with self._lifecycle.admitted():
                if self._auth is not None:
                    self._auth.check(headers, method)
                response = await handle()
        except asyncio.CancelledError:
            end_call(call, grpc.StatusCode.CANCELLED)
            raise
        except BodyTooLarge as exc:
            end_call(call, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            return _error(PAYLOAD_TOO_LARGE, str(exc), call.request_id)
        except Exception as exc:
            code, details = status_of(exc, call)
            end_call(call, code, details)
            response = _error(http_status(code), details, call.request_id)
            if isinstance(exc, MaasError):
                response.headers.update(dict(exc.trailing_metadata()))
            return response
        end_call(call, grpc.StatusCode.OK)
        response.headers[REQUEST_ID_KEY] = call.request_id
        return response


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("the request body is not JSON") from None


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: the gRPC server's drain decides when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing (uvicorn's own would replace the service's SIGTERM handling)."""
        yield


class HttpServer:
    """uvicorn serving an ASGI app on the running event loop, started and stopped by its owner."""

    def __init__(
        self,
        app: Starlette,
        host: str,
        port: int,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        client_ca_file: Path | None = None,
    ) -> None:
        """Args:
        app: the ASGI application.
        host: address to bind.
        port: port to bind (0 picks one).
        cert_file: PEM certificate chain to serve HTTPS with (with `key_file`); None: plain HTTP.
        key_file: its private key.
        client_ca_file: PEM CA(s) callers' certificates must chain to (mutual TLS); None: none asked for.
        """
        tls = {}
        if cert_file is not None:
            tls = {"ssl_certfile": str(cert_file), "ssl_keyfile": str(key_file)}
            if client_ca_file is not None:
                tls |= {"ssl_ca_certs": str(client_ca_file), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=STOP_GRACE_SECONDS,
            **tls,
        )
        self._server = _Server(self._config)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._task: asyncio.Task | None = None
        self.port = 0

    async def start(self) -> None:
        """Bind the port and start serving.

        Raises:
            OSError: the address could not be bound.
            RuntimeError: uvicorn stopped before it served.
        """
        host = self._config.host
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, self._config.port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"HTTP port {host}:{self._config.port}: {exc.strerror}") from None
        self.port = sock.getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                raise RuntimeError(f"the HTTP server on {host}:{self.port} stopped before it served")
            await asyncio.sleep(STARTUP_POLL_SECONDS)

    async def stop(self) -> None:
        """Stop accepting connections, let requests in flight finish (briefly), and release the port."""
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None
