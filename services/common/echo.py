"""The diagnostic `echo` model: returns its inputs unchanged.

Every service serves it, so serving overhead can be measured against it. The request parameter
`delay_ms` holds the answer back that long, to make slow calls on purpose (drain and deadline tests).
"""

from __future__ import annotations

import asyncio

from services.common.errors import InvalidInput, ModelNotFound, ModelNotReady
from services.common.models import InferRequest, InferResult, ServedModel, VersionState

MAX_DELAY_MS = 60_000


class EchoModel(ServedModel):
    """Returns every input as an output of the same name, datatype and shape. One version: "1"."""

    name = "echo"
    platform = "maas_echo"
    version = "1"

    def __init__(self) -> None:
        self._loaded = True

    def index(self) -> list[VersionState]:
        """Return the single version with its state."""
        if self._loaded:
            return [VersionState(self.version, "READY")]
        return [VersionState(self.version, "UNAVAILABLE", "unloaded")]

    def _check_version(self, version: str) -> None:
        if version not in ("", self.version):
            raise ModelNotFound(f"model 'echo' has no version '{version}'; versions: {self.version}")

    def resolve(self, version: str) -> str:
        """Return "1" for "" or "1"."""
        self._check_version(version)
        if not self._loaded:
            raise ModelNotReady("model 'echo' is unloaded; load it with RepositoryModelLoad")
        return self.version

    async def infer(self, request: InferRequest) -> InferResult:
        """Return the inputs, after `delay_ms` if the request asks for it."""
        delay = request.parameters.get("delay_ms", 0)
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_DELAY_MS:
            raise InvalidInput(f"parameter 'delay_ms' must be an integer in [0, {MAX_DELAY_MS}], got {delay!r}")
        if delay:
            await asyncio.sleep(delay / 1000)
        return InferResult(outputs=list(request.inputs.values()), version=request.version)

    async def load(self, version: str) -> None:
        """Mark the model ready."""
        self._check_version(version)
        self._loaded = True

    async def unload(self, version: str) -> None:
        """Mark the model unloaded."""
        self._check_version(version)
        self._loaded = False
