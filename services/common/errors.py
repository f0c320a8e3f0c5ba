"""The error hierarchy. Raise these anywhere; one interceptor maps them to gRPC status codes.

Each class carries the status it maps to in `grpc_code`; the message becomes the status details, so
it must say what was wrong in words a caller can act on, and never hold a traceback.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class MaasError(Exception):
    """Base of every error a caller may see. Raise a subclass; the base maps to INTERNAL."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL


class InvalidInput(MaasError):
    """The request is malformed: wrong shape, dtype, size, encoding or value."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(MaasError):
    """No such model, or no such version of it."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class Unavailable(MaasError):
    """The server cannot take the call now (draining, or a dependency is down); retry elsewhere."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class ModelNotReady(Unavailable):
    """The model exists but is not loaded, or is loading or unloading."""


class Overloaded(MaasError):
    """Over a size, rate or queue limit."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(MaasError):
    """Missing or wrong credentials."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class DownstreamError(MaasError):
    """A call to another service failed: its status code and details pass through unchanged."""

    def __init__(self, code: grpc.StatusCode, details: str, target: str) -> None:
        super().__init__(details)
        self.grpc_code = code
        self.target = target
