"""Ray's errors at the ray hosting's boundary become the statuses the grpc hosting gives."""

from __future__ import annotations

import grpc
from grpc.aio import Metadata

from services.common.errors import InvalidInput, Overloaded
from services.common.interceptor import status_code
from services.ray.errors import unwrapped


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, Metadata(), Metadata(), details)


def test_a_call_over_the_transport_message_limit_is_overloaded_with_the_reason():
    refused = rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (6291688 vs. 4194304)")
    error = unwrapped(refused)
    assert isinstance(error, Overloaded) and status_code(error) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "transport message limit" in str(error) and "6291688 vs. 4194304" in str(error)


def test_other_transport_errors_and_the_replicas_own_errors_pass_unchanged():
    unavailable = rpc_error(grpc.StatusCode.UNAVAILABLE, "connection reset")
    assert unwrapped(unavailable) is unavailable
    invalid = InvalidInput("bad pixels")
    assert unwrapped(invalid) is invalid
