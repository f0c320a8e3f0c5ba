"""Ray's errors at the boundary of the ray hosting, turned into maas errors once."""

from __future__ import annotations

import grpc
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from services.common.errors import ModelNotReady, Overloaded, Unavailable

BACK_PRESSURE_RETRY_SECONDS = 0.1
"""The retry delay a refusal for Serve's back pressure suggests: about one batch of a model's time."""


def unwrapped(exc: BaseException) -> BaseException:
    """The exception a caller of the ray hosting should see for one Ray raised.

    A replica's own exception (a `MaasError` such as InvalidInput) comes back wrapped in
    `RayTaskError`: its cause is returned, so its status is the one the grpc hosting gives.

    Args:
        exc: what awaiting a `DeploymentResponse` raised.

    Returns:
        The replica's exception, Overloaded for Serve's back pressure or a call over the message limit
        of Serve's gRPC transport to a replica (`services.ray.environment.TRANSPORT`), Unavailable when
        no replica can take the call, or `exc` itself.
    """
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        return cause if isinstance(cause, BaseException) else exc
    if isinstance(exc, BackPressureError):
        return Overloaded(
            f"every replica is at its request limit; retry shortly ({exc.message})",
            retry_delay=BACK_PRESSURE_RETRY_SECONDS,
        )
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Overloaded(f"the call to a replica is over Ray's transport message limit ({exc.details()})")
    if isinstance(exc, DeploymentUnavailableError):
        return ModelNotReady(f"the deployment is unavailable: {exc.message}")
    if isinstance(exc, ActorDiedError | ActorUnavailableError | RayActorError):
        return Unavailable("the replica serving the call died; retry", retry_delay=0.0)
    return exc
