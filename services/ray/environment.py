"""Environment variables Ray reads once, when it is imported or started: set them before either happens.

This module does not import Ray, so a process can set them before its first `import ray`.
"""

from __future__ import annotations

import os

TRANSPORT = {"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1)}
"""The largest message Serve's gRPC transport takes, read when Serve is imported: by a replica (a front's
call) and by a front's handle (the replica's answers). Ray's default, 4 MiB, is far below one call of a
front, which carries up to 64 requests of up to 64 MiB each; gRPC's own maximum instead."""

LOCAL_RAY = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
}
"""What a local Ray on a shared machine is started with (its workers, replicas included, inherit it)."""


def set_defaults(variables: dict[str, str]) -> None:
    """Set each variable the environment does not set already (a value set there wins).

    Args:
        variables: name -> value.
    """
    for name, value in variables.items():
        os.environ.setdefault(name, value)
