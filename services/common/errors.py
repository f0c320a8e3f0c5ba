"""The error hierarchy. Raise these anywhere; one interceptor maps them to gRPC status codes.

Each class carries the name of the gRPC status it maps to in `code` (a `grpc.StatusCode` member's name);
the message becomes the status details, so it must say what was wrong in words a caller can act on,
and never hold a traceback. Two attributes become `google.rpc` error details beside it: `retry_delay`
(a refusal that invites a retry: a `RetryInfo`) and `field` (the request field that was wrong: a
`BadRequest`). This module does not import grpc: models raise these errors, and a model knows nothing
of gRPC.
"""

from __future__ import annotations

import enum
from typing import ClassVar

NOT_RUN_KEY = "x-maas-not-run"
"""Trailing metadata a server sends with a call it refused before running any of it (value: why)."""


class MaasError(Exception):
    """Base of every error a caller may see. Raise a subclass; the base maps to INTERNAL."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str = "", *, retry_delay: float | None = None, field: str | None = None) -> None:
        """Args:
        message: what was wrong, in words a caller can act on (the status details).
        retry_delay: seconds after which the same call may succeed (sent as `google.rpc.RetryInfo`);
            None: retrying will not help.
        field: the request field that was wrong, as a path (`inputs[IMAGE]`, `texts[2]`,
            `parameters.max_length`; sent as `google.rpc.BadRequest`).
        """
        super().__init__(message)
        self.retry_delay = retry_delay
        self.field = field

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata sent with the status, beside the request id; none by default."""
        return ()


class InvalidInput(MaasError):
    """The request is malformed: wrong shape, dtype, size, encoding or value."""

    code = "INVALID_ARGUMENT"


class ModelNotFound(MaasError):
    """No such model, or no such version of it."""

    code = "NOT_FOUND"


class Unavailable(MaasError):
    """The server cannot take the call now (draining, or a dependency is down); retry elsewhere."""

    code = "UNAVAILABLE"


class Draining(Unavailable):
    """The server is shutting down and refused the call before running it: safe to retry elsewhere, at once."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_delay=0.0)

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """Says the call did not run (`x-maas-not-run: draining`), so a client may retry it."""
        return ((NOT_RUN_KEY, "draining"),)


class ModelNotReady(Unavailable):
    """The model exists but is not loaded, or is loading or unloading."""


class Overloaded(MaasError):
    """Over a size, rate or queue limit."""

    code = "RESOURCE_EXHAUSTED"


class Unauthenticated(MaasError):
    """Missing or wrong credentials."""

    code = "UNAUTHENTICATED"


class PermissionDenied(MaasError):
    """The caller is known but may not make this call (its API key lacks the role)."""

    code = "PERMISSION_DENIED"


class NotRun(enum.Enum):
    """Why a failed downstream call surely did not run there."""

    UNREACHABLE = "unreachable"
    """No endpoint of the target could be reached, so the call was never sent."""
    REFUSED = "refused"
    """The target refused the call before running it (it was draining)."""


class DownstreamError(MaasError):
    """A call to another service failed: its status code and details pass through unchanged.

    `not_run` says why the call surely did not run downstream (None: it may have run), which is
    what decides whether it may be retried.
    """

    def __init__(
        self, code: str, details: str, target: str, not_run: NotRun | None = None, status_details: bytes | None = None
    ) -> None:
        """Args:
        code: the downstream status's name (`grpc.StatusCode.X.name`).
        details: its details.
        target: the target that answered.
        not_run: why the call surely did not run there, if it surely did not.
        status_details: its `google.rpc.Status` (`grpc-status-details-bin`), passed on unchanged.
        """
        super().__init__(details)
        self.code = code
        self.target = target
        self.not_run = not_run
        self.status_details = status_details


class DeadlineExceeded(MaasError):
    """The caller's deadline passed before the work was done; the work was dropped."""

    code = "DEADLINE_EXCEEDED"
