"""Model classes served from the repository: every loaded version is one instance of the class, behind
its own dynamic batcher (or answering each request alone when the class declares no batching).

`serve_model` turns a model class (see `services.common.model`) into the `ModelVersions` the v2 servicer
serves: versions listed from `<repo>/<name>/`, each checked against its config before the class loads it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from services.common import metrics, offload
from services.common.batcher import BatchingConfig, DynamicBatcher
from services.common.codec import Tensor
from services.common.errors import MaasError
from services.common.examples import example_tensors
from services.common.interceptor import received_bytes
from services.common.model import Arrays, Batching, Parameters, SharedPool, TensorSpec, Version
from services.common.repository import RepositoryError, read_model_file, read_version, version_dirs
from services.common.stats import VersionStats
from services.common.versions import BatchLimits, InferResult, LoadedVersion, ModelVersions, VersionLoad

log = logging.getLogger(__name__)

DEFAULT_PLATFORM = "python"


class Batched:
    """A loaded version behind a dynamic batcher: `prepare` per request, `predict` per batch."""

    def __init__(self, model: Any, outputs: tuple[TensorSpec, ...], batcher: DynamicBatcher) -> None:
        self._prepare = getattr(model, "prepare", None)
        self._outputs = outputs
        self._batcher = batcher

    async def infer(self, inputs: dict[str, Tensor], parameters: Parameters, counted: bool = True) -> InferResult:
        """Prepare the request, queue it, and return its rows of every output.

        Args:
            inputs: the decoded inputs.
            parameters: the request's parameters.
            counted: record its queue time in the statistics (a warm-up's is not: it is no request).
        """
        arrays = {name: tensor.array for name, tensor in inputs.items()}
        if self._prepare is not None:
            arrays = self._prepare(arrays, parameters)
        outputs = await self._batcher.submit(arrays, counted=counted)
        rows = next(iter(arrays.values())).shape[0]
        tensors = [Tensor(spec.name, spec.datatype, outputs[spec.name]) for spec in self._outputs]
        return InferResult(tensors, batch_size=rows, batched=True)


class Direct:
    """A loaded version of a model without batching: `prepare` and `predict` per request, on the event loop,
    or on a worker thread for a request over `inline_max_bytes` on the wire (see `services.common.offload`)."""

    def __init__(self, model: Any, outputs: tuple[TensorSpec, ...], inline_max_bytes: int) -> None:
        self._prepare = getattr(model, "prepare", None)
        self._predict = model.predict
        self._outputs = outputs
        self._inline_max_bytes = inline_max_bytes

    async def infer(self, inputs: dict[str, Tensor], parameters: Parameters) -> InferResult:
        """Prepare the request and predict its outputs."""
        arrays = {name: tensor.array for name, tensor in inputs.items()}
        outputs = await offload.run(partial(self._run, arrays, parameters), received_bytes(), self._inline_max_bytes)
        tensors = [Tensor(spec.name, spec.datatype, outputs[spec.name]) for spec in self._outputs]
        return InferResult(tensors, batch_size=tensors[0].array.shape[0] if tensors else 1)

    def _run(self, arrays: Arrays, parameters: Parameters) -> Arrays:
        request: Any = arrays if self._prepare is None else self._prepare(arrays, parameters)
        return self._predict(request)


def record_device(model: str, version: str, device: str) -> None:
    """Log the device a version was loaded on, and export it as `maas_model_version_device`."""
    metrics.MODEL_DEVICE.labels(model, version, device).set(1)
    log.info("%s version %s loaded on %s", model, version, device)


class RepositoryLoader:
    """Loads versions of a model class from `<repository>/<name>/<version>/` (a `Loader`)."""

    def __init__(
        self,
        cls: type,
        name: str,
        settings: Any,
        device: str,
        pool: SharedPool,
        batching: BatchingConfig | None,
        tensors: tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]] | None = None,
    ) -> None:
        """Args:
        cls: the model class.
        name: the model name served (the directory under the repository).
        settings: the service's settings (`model_repository`, and limits the model reads).
        device: where versions load (`cpu`, `cuda:N`).
        pool: objects shared between the service's loaded versions.
        batching: how its requests batch; None: each runs alone.
        tensors: the inputs and outputs served (default: the class's).
        """
        self._cls = cls
        self._inputs, self._outputs = tensors or (cls.inputs, cls.outputs)
        self._name = name
        self._repository = settings.model_repository
        self._settings = settings
        self._device = device
        self._pool = pool
        self._batching = batching
        self._batchers: dict[str, DynamicBatcher] = {}

    def available(self) -> list[str]:
        """Versions present under `<repository>/<name>/`."""
        return version_dirs(self._repository, self._name)

    async def open(self, version: str, stats: VersionStats) -> LoadedVersion:
        """Check the version directory against its config and the class's tensors, then load it.

        Raises:
            RepositoryError: the directory or config is unusable, or the class failed to load it (the
                message says why).
        """
        directory = self._repository / self._name / version
        config = await asyncio.to_thread(read_version, directory, self._name)
        config.check_tensors(self._inputs, self._outputs)
        context = Version(self._name, directory, config, self._device, self._settings, self._pool)
        try:
            model = await asyncio.to_thread(self._cls.load, context)
        except MaasError:
            context.release()
            raise
        except Exception as exc:
            context.release()
            raise RepositoryError(f"{directory}: {self._cls.__name__}.load failed: {exc!r}") from exc
        except BaseException:
            context.release()
            raise
        device = str(getattr(model, "device", self._device))
        record_device(self._name, version, device)
        admit = None
        if self._batching is None:
            served: Batched | Direct = Direct(model, self._outputs, self._settings.inline_max_bytes)

            def load() -> VersionLoad:
                return VersionLoad(device, 0, stats.in_flight)

        else:
            batcher = DynamicBatcher(self._name, model.predict, self._batching, stats, version)
            self._batchers[version] = batcher
            served = Batched(model, self._outputs, batcher)
            admit = batcher.admit

            def load() -> VersionLoad:
                return VersionLoad(device, batcher.queued, batcher.in_flight)

        async def close() -> None:
            batcher = self._batchers.pop(version, None)
            if batcher is not None:
                await batcher.close()
            release = getattr(model, "close", None)
            if release is not None:
                await asyncio.to_thread(release)
            context.release()
            metrics.MODEL_DEVICE.remove(self._name, version, device)

        try:
            await self._warm_up(served, stats, version)
        except BaseException:
            await close()
            raise
        return LoadedVersion(version, stats, served.infer, config, model, close, load, admit)

    async def _warm_up(self, served: Batched | Direct, stats: VersionStats, version: str) -> None:
        """Run a version just loaded once on example inputs (`example_tensors` of its required inputs), so
        that its first caller does not pay for what a model does on its first run (lazy initialisation,
        allocations, kernel choices). It counts as one execution and no request in its statistics.

        Raises:
            MaasError: the version failed on the example inputs.
        """
        specs = [(spec.name, spec.datatype, spec.shape) for spec in self._inputs if not spec.optional]
        if not specs:
            return
        started = time.perf_counter_ns()
        inputs = {tensor.name: tensor for tensor in example_tensors(specs)}
        if isinstance(served, Batched):
            await served.infer(inputs, {}, counted=False)
        else:
            result = await served.infer(inputs, {})
            stats.record_execution(result.batch_size, time.perf_counter_ns() - started)
        log.info("%s version %s warmed up in %.1f ms", self._name, version, (time.perf_counter_ns() - started) / 1e6)

    def batch_limits(self) -> BatchLimits:
        """The dynamic batcher's limits, or no batch dimension for a class that runs each request alone."""
        if self._batching is None:
            return BatchLimits()
        return BatchLimits(self._batching.max_batch_size, True, self._batching.max_queue_delay_ms)

    def reconfigure(self, **limits: float) -> None:
        """Change batching limits of every loaded version, and of versions loaded later.

        Args:
            limits: `BatchingConfig` fields to change, e.g. `max_batch_size`, `max_queue_delay_ms`.
        """
        if self._batching is None:
            return
        self._batching = replace(self._batching, **limits)
        for batcher in self._batchers.values():
            batcher.reconfigure(self._batching)


def newest_tensors(repository: Path, name: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The inputs and outputs the newest version of `name` declares.

    Raises:
        RepositoryError: there is no version, or its config is unusable.
    """
    versions = version_dirs(repository, name)
    if not versions:
        raise RepositoryError(f"no version of {name} in {repository}: its config declares the tensors to serve")
    config = read_version(repository / name / versions[-1], name)
    return tuple(t.spec() for t in config.inputs), tuple(t.spec() for t in config.outputs)


def serve_model(
    cls: type, settings: Any, device: str = "cpu", pool: SharedPool | None = None, name: str = "", make: str = ""
) -> ModelVersions:
    """A model class served from the repository its settings name.

    Args:
        cls: the model class (`name`, `inputs`, `outputs`, `load`, `predict`; optionally `platform`,
            `batching`, `prepare`, `close`). A class whose `inputs` is None serves the tensors its newest
            version's config declares (`OnnxModel`).
        settings: the service's settings: `model_repository`, and `batching()` if the class batches.
        device: where its versions load.
        pool: objects its versions share with the service's other models (default: its own).
        name: the name to serve it under (default: the class's `name`).
        make: the command that puts a first version in the repository, for the message when none exists.

    Returns:
        The served model, with no version loaded yet.

    Raises:
        RepositoryError: its `model.json` is invalid, or a class that takes its tensors from the repository
            finds no version there.
    """
    name = name or cls.name
    model_file = read_model_file(settings.model_repository, name)
    traits: Batching | None = getattr(cls, "batching", Batching())
    batching = None if traits is None else settings.batching(pad=traits.pad, inline_when_idle=traits.inline_when_idle)
    tensors = (cls.inputs, cls.outputs) if cls.inputs is not None else newest_tensors(settings.model_repository, name)
    pool = SharedPool() if pool is None else pool
    loader = RepositoryLoader(cls, name, settings, device, pool, batching, tensors)
    hint = f" in {settings.model_repository / name}" + (f"; run `{make}`" if make else "")
    return ModelVersions(
        name,
        getattr(cls, "platform", DEFAULT_PLATFORM),
        *tensors,
        loader,
        model_file.policy,
        model_file.default_version,
        hint,
    )
