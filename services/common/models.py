"""What the v2 servicer serves: models with declared tensors, versions and a readiness state."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from services.common.codec import Tensor
from services.common.errors import InvalidInput, ModelNotFound, ModelNotReady
from services.common.examples import example_tensors
from services.common.interceptor import label_version
from services.common.stats import VersionStats

log = logging.getLogger(__name__)

Parameter = bool | int | float | str


@dataclass(frozen=True)
class TensorSpec:
    """A declared input or output: name, v2 datatype and shape (-1 marks a variable dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False

    def check(self, tensor: Tensor) -> None:
        """Check a decoded input against this spec.

        Raises:
            InvalidInput: the datatype or shape differs.
        """
        if tensor.datatype != self.datatype:
            raise InvalidInput(
                f"input '{self.name}' must be {self.datatype}, got {tensor.datatype}",
                field=f"inputs[{self.name}].datatype",
            )
        shape = tensor.array.shape
        if len(shape) != len(self.shape) or any(
            want not in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        ):
            raise InvalidInput(
                f"input '{self.name}' must have shape {list(self.shape)}, got {list(shape)}",
                field=f"inputs[{self.name}].shape",
            )


@dataclass
class InferRequest:
    """A decoded, validated inference request for one model version."""

    inputs: dict[str, Tensor]
    version: str
    parameters: dict[str, Parameter] = field(default_factory=dict)
    warm_up: bool = False
    """A version's warm-up run (see `VersionedModel.warm_up`), not a caller's request."""


@dataclass
class InferResult:
    """A model's answer: its outputs, the version that produced them and the rows it inferred.

    `batched` is True when a dynamic batcher ran the request and recorded the execution, and the
    request's queue and compute, itself.
    """

    outputs: list[Tensor]
    version: str
    batch_size: int = 1
    batched: bool = False


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions a model loads by default: the newest `count`, all, or a specific list."""

    kind: Literal["latest", "all", "specific"] = "latest"
    count: int = 1
    versions: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """Parse "latest", "latest:N", "all" or "specific:V1,V2,...".

        Raises:
            ValueError: anything else.
        """
        kind, _, argument = text.strip().partition(":")
        if kind == "latest" and (not argument or (argument.isdigit() and int(argument) > 0)):
            return cls("latest", int(argument or 1))
        if kind == "all" and not argument:
            return cls("all")
        versions = tuple(v.strip() for v in argument.split(","))
        if kind == "specific" and argument and all(v.isdigit() for v in versions):
            return cls("specific", versions=versions)
        raise ValueError(f"version policy '{text}': expected latest, latest:N, all or specific:V1,V2")

    def select(self, available: list[str]) -> list[str]:
        """The versions to load out of `available` (oldest first)."""
        if self.kind == "all":
            return list(available)
        if self.kind == "specific":
            return [v for v in available if v in self.versions]
        return available[-self.count :]


@dataclass(frozen=True)
class VersionLoad:
    """A loaded version's device (none for models without one) and its requests queued and in flight."""

    device: str = ""
    queue_depth: int = 0
    in_flight: int = 0


@dataclass(frozen=True)
class BatchLimits:
    """How a model takes batches, as the v2 ModelConfig reports it.

    Attributes:
        max_batch_size: most rows (the first dimension of every tensor) the model runs at once; 0 when
            its tensors have no batch dimension.
        dynamic: whether a dynamic batcher gathers concurrent requests into one run.
        max_queue_delay_ms: longest the oldest queued request waits for others to join its batch.
    """

    max_batch_size: int = 0
    dynamic: bool = False
    max_queue_delay_ms: float = 0.0


@dataclass(frozen=True)
class VersionState:
    """One version's entry in the repository index."""

    version: str
    state: str
    reason: str = ""


class ServedModel(ABC):
    """A model the v2 servicer can serve. Subclasses set the class attributes and implement infer."""

    name: str
    platform: str
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    policy: VersionPolicy = VersionPolicy()

    def __init__(self) -> None:
        self._stats: dict[str, VersionStats] = {}

    def batch_limits(self) -> BatchLimits:
        """How the model batches; no batch dimension unless a subclass says otherwise."""
        return BatchLimits()

    def version_stats(self, version: str) -> VersionStats:
        """The statistics of one version, created on first use."""
        if version not in self._stats:
            self._stats[version] = VersionStats()
        return self._stats[version]

    @abstractmethod
    def index(self) -> list[VersionState]:
        """Return every version known to the model with its state (READY, UNAVAILABLE, ...)."""

    @abstractmethod
    def resolve(self, version: str) -> str:
        """Return the version a request for `version` ("" = default) is served by.

        Raises:
            ModelNotFound: no such version.
            ModelNotReady: the version exists but is not loaded.
        """

    @abstractmethod
    async def infer(self, request: InferRequest) -> InferResult:
        """Run the model on a validated request.

        Raises:
            InvalidInput: the values (not the shapes) are unacceptable.
        """

    @abstractmethod
    async def load(self, version: str) -> None:
        """Load `version` ("" = the policy's default) and make it ready.

        Raises:
            ModelNotFound: no such version.
        """

    @abstractmethod
    async def unload(self, version: str) -> None:
        """Unload `version` ("" = every version); requests for it then fail.

        Raises:
            ModelNotFound: no such version.
        """

    def admit(self, version: str) -> None:
        """Refuse a request for a resolved `version` that could not be queued now, before anything in
        it is decoded or checked; admits every request by default.

        Raises:
            Overloaded: the version's queue is full.
        """
        return None

    def load_of(self, version: str) -> VersionLoad:
        """Where a loaded version computes and how busy it is: no device and nothing queued by default,
        the requests the v2 servicer is serving as its in-flight count."""
        return VersionLoad(in_flight=self.version_stats(version).in_flight)

    def is_ready(self, version: str = "") -> bool:
        """True if a request for `version` would be served now."""
        ready = {v.version for v in self.index() if v.state == "READY"}
        return bool(ready) if not version else version in ready

    def check_inputs(self, inputs: Mapping[str, Tensor]) -> None:
        """Check decoded inputs against the declared ones; a model declaring none accepts any.

        Raises:
            InvalidInput: an input is missing, unexpected, or of the wrong datatype or shape.
        """
        if not self.inputs:
            return
        declared = {spec.name: spec for spec in self.inputs}
        unexpected = sorted(set(inputs) - set(declared))
        if unexpected:
            raise InvalidInput(
                f"model '{self.name}' has no input {', '.join(unexpected)}; inputs: {', '.join(declared)}",
                field="inputs",
            )
        for spec in self.inputs:
            if spec.name not in inputs:
                if spec.optional:
                    continue
                raise InvalidInput(
                    f"model '{self.name}' needs input '{spec.name}' ({spec.datatype} {list(spec.shape)})",
                    field=f"inputs[{spec.name}]",
                )
            spec.check(inputs[spec.name])


class VersionedModel(ServedModel):
    """A model whose loaded versions are objects kept in memory, newest served by default.

    Subclasses say which versions exist (`available_versions`) and how to load one
    (`load_version`); this class keeps the index, resolves versions and loads and unloads.
    """

    def __init__(self, policy: VersionPolicy | None = None) -> None:
        super().__init__()
        self.policy = policy or VersionPolicy()
        self._loaded: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    @abstractmethod
    def available_versions(self) -> list[str]:
        """Every version that could be loaded, oldest first."""

    @abstractmethod
    async def load_version(self, version: str) -> Any:
        """Load one version and return what `loaded()` hands back for it.

        Raises:
            InvalidInput: the version's files are unusable (the message says why).
        """

    def default_versions(self) -> list[str]:
        """Versions loaded when a load names none, as the version policy selects them."""
        return self.policy.select(self.available_versions())

    def index(self) -> list[VersionState]:
        """Every available version, READY if loaded."""
        return [
            VersionState(v, "READY") if v in self._loaded else VersionState(v, "UNAVAILABLE", "not loaded")
            for v in self.available_versions()
        ]

    def _check_exists(self, version: str) -> None:
        available = self.available_versions()
        if version not in available:
            raise ModelNotFound(
                f"model '{self.name}' has no version '{version}'; versions: {', '.join(available) or 'none'}"
            )

    def resolve(self, version: str) -> str:
        """Return `version` if loaded, or the newest loaded version for ""; label the call being served
        with it (its metrics carry the version)."""
        if not version:
            if not self._loaded:
                raise ModelNotReady(f"model '{self.name}' has no version loaded")
            newest = max(self._loaded, key=_version_key)
            label_version(self.name, newest)
            return newest
        if version not in self._loaded:
            self._check_exists(version)
            raise ModelNotFound(
                f"model '{self.name}' version {version} is not loaded; loaded versions: "
                f"{', '.join(sorted_versions(self._loaded)) or 'none'}"
            )
        label_version(self.name, version)
        return version

    def loaded(self, version: str) -> Any:
        """Return what `load_version` returned for a loaded version (see `resolve`)."""
        return self._loaded[self.resolve(version)]

    async def load(self, version: str) -> None:
        """Load `version`, or the default versions for ""."""
        async with self._lock:
            versions = [version] if version else self.default_versions()
            if not versions:
                raise ModelNotFound(f"model '{self.name}' has no versions to load")
            for v in versions:
                self._check_exists(v)
                if v not in self._loaded:
                    self._loaded[v] = await self.load_version(v)
                    try:
                        await self.warm_up(v)
                    except BaseException:
                        await self.release_version(v, self._loaded.pop(v))
                        raise

    async def warm_up(self, version: str) -> None:
        """Run a version just loaded once on example inputs (`example_tensors` of its required inputs), so
        that its first caller does not pay for what a model does on its first run (lazy initialisation,
        allocations, kernel choices). It counts as one execution and no request in its statistics.

        Raises:
            MaasError: the version failed on the example inputs (it is then unloaded).
        """
        specs = [(spec.name, spec.datatype, spec.shape) for spec in self.inputs if not spec.optional]
        if not specs:
            return
        started = time.perf_counter_ns()
        inputs = {tensor.name: tensor for tensor in example_tensors(specs)}
        result = await self.infer(InferRequest(inputs=inputs, version=version, warm_up=True))
        elapsed = time.perf_counter_ns() - started
        if not result.batched:
            self.version_stats(version).record_execution(result.batch_size, elapsed)
        log.info("%s version %s warmed up in %.1f ms", self.name, version, elapsed / 1e6)

    async def unload(self, version: str) -> None:
        """Unload `version`, or every version for "". Calls already holding a version finish on it."""
        async with self._lock:
            versions = list(self._loaded) if not version else [version]
            if version:
                self._check_exists(version)
            for v in versions:
                released = self._loaded.pop(v, None)
                if released is not None:
                    await self.release_version(v, released)

    async def release_version(self, version: str, loaded: Any) -> None:
        """Free what `load_version` returned once its version is unloaded; nothing by default."""


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def sorted_versions(versions: Iterable[str]) -> list[str]:
    """Sort version names numerically, oldest first."""
    return sorted(versions, key=_version_key)


class ModelRegistry:
    """The models one server serves, by name."""

    def __init__(self, models: Iterable[ServedModel]) -> None:
        self._models = {model.name: model for model in models}

    def __iter__(self):
        return iter(self._models.values())

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def get(self, name: str) -> ServedModel:
        """Return the model called `name`.

        Raises:
            ModelNotFound: no model of that name is served here.
        """
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(
                f"unknown model '{name}'; this server serves: {', '.join(sorted(self._models))}"
            ) from None
