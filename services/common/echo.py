"""The diagnostic `echo` model: returns its inputs unchanged.

Every service serves it, so serving overhead can be measured against it. The request parameter
`delay_ms` holds the answer back that long, to make slow calls on purpose (drain and deadline tests).
"""

from __future__ import annotations

import asyncio

from services.common.errors import InvalidInput
from services.common.models import InferRequest, InferResult, VersionedModel

MAX_DELAY_MS = 60_000


class EchoModel(VersionedModel):
    """Returns every input as an output of the same name, datatype and shape. One version: "1"."""

    name = "echo"
    platform = "maas_echo"

    def available_versions(self) -> list[str]:
        """The single version, "1"."""
        return ["1"]

    async def load_version(self, version: str) -> bool:
        """Nothing to load."""
        return True

    async def infer(self, request: InferRequest) -> InferResult:
        """Return the inputs, after `delay_ms` if the request asks for it."""
        delay = request.parameters.get("delay_ms", 0)
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_DELAY_MS:
            raise InvalidInput(
                f"parameter 'delay_ms' must be an integer in [0, {MAX_DELAY_MS}], got {delay!r}",
                field="parameters.delay_ms",
            )
        if delay:
            await asyncio.sleep(delay / 1000)
        return InferResult(outputs=list(request.inputs.values()), version=request.version)
