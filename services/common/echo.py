"""The diagnostic `echo` model: returns its inputs unchanged.

Every service serves it, so serving overhead can be measured against it. The request parameter
`delay_ms` holds the answer back that long, to make slow calls on purpose (drain and deadline tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from services.common.codec import Tensor
from services.common.errors import InvalidInput
from services.common.model import Parameters
from services.common.repository import VersionPolicy
from services.common.versions import FixedVersions, InferResult, ModelVersions

MAX_DELAY_MS = 60_000
PLATFORM = "maas_echo"


async def echo(inputs: dict[str, Tensor], parameters: Parameters) -> InferResult:
    """Every input as an output of the same name, datatype and shape, after `delay_ms` if asked.

    Raises:
        InvalidInput: `delay_ms` is not an integer in [0, 60000].
    """
    delay = parameters.get("delay_ms", 0)
    if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_DELAY_MS:
        raise InvalidInput(
            f"parameter 'delay_ms' must be an integer in [0, {MAX_DELAY_MS}], got {delay!r}",
            field="parameters.delay_ms",
        )
    if delay:
        await asyncio.sleep(delay / 1000)
    return InferResult(outputs=list(inputs.values()))


def echo_model(
    name: str = "echo", versions: Iterable[str] = ("1",), policy: VersionPolicy | None = None
) -> ModelVersions:
    """The echo model: declares no inputs or outputs (it accepts any), one version "1" by default.

    Args:
        name: the name to serve it under.
        versions: its version names.
        policy: which of them a load naming none loads (default: the newest).
    """
    return ModelVersions(name, PLATFORM, (), (), FixedVersions(versions, echo), policy)
