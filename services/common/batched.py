"""Repository models served through a dynamic batcher: one batcher per loaded version."""

from __future__ import annotations

import logging
from abc import abstractmethod
from dataclasses import replace
from pathlib import Path

from services.common import metrics
from services.common.batcher import Arrays, BatchingConfig, DynamicBatcher, Predict
from services.common.codec import Tensor
from services.common.models import BatchLimits, InferRequest, InferResult, VersionLoad
from services.common.repository import RepositoryModel, VersionConfig

log = logging.getLogger(__name__)


class BatchedModel(RepositoryModel):
    """A repository model whose versions run behind a `DynamicBatcher`.

    Subclasses build a version's predict function (numpy in, numpy out) and may check and normalise
    input values in `prepare`, which runs before a request joins a batch.
    """

    def __init__(self, repository: Path, batching: BatchingConfig) -> None:
        super().__init__(repository)
        self.batching = batching
        self.devices: dict[str, str] = {}

    @abstractmethod
    def build(self, directory: Path, config: VersionConfig) -> Predict:
        """Load a checked version and return its predict function (runs on a worker thread)."""

    def record_device(self, version: str, device: str) -> None:
        """Log the device a version was loaded on, and export it as `maas_model_version_device`.

        Args:
            version: the version being built.
            device: its torch device (`cpu`, `cuda:N`).
        """
        self.devices[version] = device
        metrics.MODEL_DEVICE.labels(self.name, version, device).set(1)
        log.info("%s version %s loaded on %s", self.name, version, device)

    def load_of(self, version: str) -> VersionLoad:
        """The version's device, and its batcher's requests queued and in flight (every path: v2 and typed)."""
        batcher: DynamicBatcher | None = self._loaded.get(version)
        if batcher is None:
            return VersionLoad(self.devices.get(version, ""))
        return VersionLoad(self.devices.get(version, ""), batcher.queued, batcher.in_flight)

    def prepare(self, inputs: Arrays, config: VersionConfig) -> Arrays:
        """Check values (shapes and dtypes are already checked) and return the arrays to batch.

        Raises:
            InvalidInput: a value is out of range.
            Overloaded: the request is over a size limit.
        """
        return inputs

    def batch_limits(self) -> BatchLimits:
        """The dynamic batcher's limits."""
        return BatchLimits(self.batching.max_batch_size, True, self.batching.max_queue_delay_ms)

    def reconfigure(self, **limits: float) -> None:
        """Change batching limits of every loaded version (and of versions loaded later).

        Args:
            limits: `BatchingConfig` fields to change, e.g. `max_batch_size`, `max_queue_delay_ms`.
        """
        self.batching = replace(self.batching, **limits)
        for batcher in self._loaded.values():
            batcher.reconfigure(self.batching)

    async def load_version(self, version: str) -> DynamicBatcher:
        """Build the version and put a batcher in front of it."""
        predict = await super().load_version(version)
        return DynamicBatcher(self.name, predict, self.batching, self.version_stats(version), version)

    async def release_version(self, version: str, loaded: DynamicBatcher) -> None:
        """Let the version's queued requests finish, then stop its batcher."""
        await loaded.close()
        device = self.devices.pop(version, None)
        if device is not None:
            metrics.MODEL_DEVICE.remove(self.name, version, device)
        await super().release_version(version, loaded)

    def admit(self, version: str) -> None:
        """Refuse at once when the version's batcher queue is full."""
        self.loaded(version).admit()

    async def infer(self, request: InferRequest) -> InferResult:
        """Check values, queue the request, and return this request's rows of every output."""
        batcher: DynamicBatcher = self.loaded(request.version)
        inputs = {name: tensor.array for name, tensor in request.inputs.items()}
        inputs = self.prepare(inputs, self.configs[request.version])
        outputs = await batcher.submit(inputs, counted=not request.warm_up)
        rows = next(iter(inputs.values())).shape[0]
        tensors = [Tensor(spec.name, spec.datatype, outputs[spec.name]) for spec in self.outputs]
        return InferResult(outputs=tensors, version=request.version, batch_size=rows, batched=True)
