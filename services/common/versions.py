"""What the v2 servicer serves: a model's versions, each loaded version answering requests.

`ModelVersions` is the one component that holds a model's loaded versions: which versions exist and
which the policy loads, the default version, loading and unloading, statistics. What a loaded version
does with a request is its loader's business (`services.common.batched` for model classes; echo and
the gateway's pipelines are functions of the request).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from services.common.codec import Tensor
from services.common.errors import InvalidInput, ModelNotFound, ModelNotReady
from services.common.interceptor import label_version
from services.common.model import Parameters, TensorSpec
from services.common.repository import VersionConfig, VersionPolicy, sorted_versions, version_key
from services.common.stats import VersionStats


@dataclass
class InferResult:
    """A loaded version's answer: its outputs and the rows it inferred.

    `batched` is True when a dynamic batcher ran the request and recorded the execution, and the
    request's queue and compute, itself.
    """

    outputs: list[Tensor]
    batch_size: int = 1
    batched: bool = False


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
class VersionLoad:
    """A loaded version's device (none for models without one) and its requests queued and in flight."""

    device: str = ""
    queue_depth: int = 0
    in_flight: int = 0


Infer = Callable[[dict[str, Tensor], Parameters], Awaitable[InferResult]]


def collect_frozen() -> None:
    """Collect what an unloaded version left in reference cycles, in a process that froze its start-up
    objects (`gc.freeze`, as `serve` does): a version loaded at start-up is frozen with them, and the
    collector never looks at frozen objects again. Unfreeze, collect, and freeze what is still alive."""
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
        gc.freeze()


async def _nothing_to_close() -> None:
    """A loaded version that holds nothing."""


@dataclass
class LoadedVersion:
    """One loaded version: how it answers a request, how it is released, and what it was loaded from.

    Attributes:
        version: its name.
        stats: its statistics.
        infer: answers one request (decoded inputs and its parameters).
        config: its `config.json` (None for versions not read from a repository).
        model: the loaded model instance, for typed servicers that use more of it than `predict`.
        close: releases it, once its queued requests are answered.
        load: its device and requests queued and in flight (None: no device, and the requests the v2
            servicer is serving as in flight).
        admit: refuses a request (`Overloaded`) that could not be queued now, before anything in it is
            decoded or checked; cheap enough to run first (None: every request is admitted).
    """

    version: str
    stats: VersionStats
    infer: Infer
    config: VersionConfig | None = None
    model: Any = None
    close: Callable[[], Awaitable[None]] = _nothing_to_close
    load: Callable[[], VersionLoad] | None = None
    admit: Callable[[], None] | None = None


class Loader(Protocol):
    """Where a model's versions come from and how one is loaded."""

    def available(self) -> list[str]:
        """Every version that could be loaded, oldest first."""

    async def open(self, version: str, stats: VersionStats) -> LoadedVersion:
        """Load one version.

        Raises:
            RepositoryError: the version's files are unusable (the message says why).
        """

    def reconfigure(self, **limits: float) -> None:
        """Change batching limits of the loaded versions and of those loaded later (if it batches)."""

    def batch_limits(self) -> BatchLimits:
        """How its versions batch (no batch dimension when they do not)."""


@dataclass(frozen=True)
class VersionState:
    """One version's entry in the repository index."""

    version: str
    state: str
    reason: str = ""


class ModelVersions:
    """A served model: its declared tensors and its versions, loaded by a `Loader`."""

    def __init__(
        self,
        name: str,
        platform: str,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        loader: Loader,
        policy: VersionPolicy | None = None,
        default_version: str = "",
        missing_hint: str = "",
    ) -> None:
        """Args:
        name: the v2 model name.
        platform: the v2 platform it reports.
        inputs: declared inputs (none: any input is accepted).
        outputs: declared outputs.
        loader: lists and loads versions.
        policy: which versions a load that names none loads (default: the newest).
        default_version: the version answering requests that name none while it is loaded ("": the newest
            loaded version that is not quantized, or the newest if all are).
        missing_hint: appended to the message when no version exists (where, and what to run).
        """
        self.name = name
        self.platform = platform
        self.inputs = inputs
        self.outputs = outputs
        self.loader = loader
        self.policy = policy or VersionPolicy()
        self.default_version = default_version
        self.missing_hint = missing_hint
        self._declared = {spec.name: spec for spec in inputs}
        self._loaded: dict[str, LoadedVersion] = {}
        self._default: LoadedVersion | None = None
        self._stats: dict[str, VersionStats] = {}
        self._lock = asyncio.Lock()

    def version_stats(self, version: str) -> VersionStats:
        """The statistics of one version, created on first use."""
        if version not in self._stats:
            self._stats[version] = VersionStats()
        return self._stats[version]

    @property
    def configs(self) -> dict[str, VersionConfig]:
        """The config of every loaded version read from a repository."""
        return {v: loaded.config for v, loaded in self._loaded.items() if loaded.config is not None}

    def index(self) -> list[VersionState]:
        """Every available version, READY if loaded."""
        return [
            VersionState(v, "READY") if v in self._loaded else VersionState(v, "UNAVAILABLE", "not loaded")
            for v in self.loader.available()
        ]

    def load_of(self, version: str) -> VersionLoad:
        """Where a loaded version computes and how busy it is (nothing for a version not loaded)."""
        loaded = self._loaded.get(version)
        if loaded is None:
            return VersionLoad()
        if loaded.load is None:
            return VersionLoad(in_flight=loaded.stats.in_flight)
        return loaded.load()

    def is_ready(self, version: str = "") -> bool:
        """True if a request for `version` ("" = the default) would be served now."""
        return bool(self._loaded) if not version else version in self._loaded

    def get(self, version: str) -> LoadedVersion:
        """The loaded version a request for `version` is served by ("" = the default); the call being
        served is labelled with it (its metrics carry the version).

        Raises:
            ModelNotFound: no such version, or it is not loaded.
            ModelNotReady: `version` is "" and no version is loaded.
        """
        loaded = self._default if not version else self._loaded.get(version)
        if loaded is None:
            if not version:
                raise ModelNotReady(f"model '{self.name}' has no version loaded")
            self._check_exists(version)
            raise ModelNotFound(
                f"model '{self.name}' version {version} is not loaded; loaded versions: "
                f"{', '.join(sorted_versions(self._loaded)) or 'none'}"
            )
        label_version(self.name, loaded.version)
        return loaded

    def platform_of(self, version: str) -> str:
        """The platform of the version a request for `version` ("" = the default) is served by, as its config
        says (a model's versions may run on different platforms: torch, ONNX Runtime); the model's own when
        that version is not loaded or has no config."""
        loaded = self._default if not version else self._loaded.get(version)
        if loaded is None or loaded.config is None:
            return self.platform
        return loaded.config.platform

    def resolve(self, version: str) -> str:
        """The name of the version a request for `version` is served by (see `get`)."""
        return self.get(version).version

    def check_inputs(self, inputs: Mapping[str, Tensor]) -> None:
        """Check decoded inputs against the declared ones; a model declaring none accepts any.

        Raises:
            InvalidInput: an input is missing, unexpected, or of the wrong datatype or shape.
        """
        if not self.inputs:
            return
        declared = self._declared
        for name in inputs:
            if name not in declared:
                unexpected = sorted(set(inputs) - set(declared))
                raise InvalidInput(
                    f"model '{self.name}' has no input {', '.join(unexpected)}; inputs: {', '.join(declared)}",
                    field="inputs",
                )
        for spec in self.inputs:
            tensor = inputs.get(spec.name)
            if tensor is None:
                if spec.optional:
                    continue
                raise InvalidInput(
                    f"model '{self.name}' needs input '{spec.name}' ({spec.datatype} {list(spec.shape)})",
                    field=f"inputs[{spec.name}]",
                )
            spec.check(tensor)

    def default_versions(self) -> list[str]:
        """The versions the policy loads.

        Raises:
            ModelNotFound: there are none.
        """
        available = self.loader.available()
        versions = self.policy.select(available)
        if not versions:
            raise ModelNotFound(
                f"no versions of model '{self.name}' for policy {self.policy.kind} "
                f"(available: {', '.join(available) or 'none'}){self.missing_hint}"
            )
        return versions

    async def load(self, version: str) -> None:
        """Load `version`, or the policy's versions for "".

        Raises:
            ModelNotFound: no such version (or none for the policy).
            RepositoryError: a version's files are unusable.
        """
        async with self._lock:
            versions = [version] if version else self.default_versions()
            for v in versions:
                self._check_exists(v)
                if v not in self._loaded:
                    self._loaded[v] = await self.loader.open(v, self.version_stats(v))
                    self._choose_default()

    async def unload(self, version: str) -> None:
        """Unload `version`, or every version for "". Calls already holding a version finish on it.

        Raises:
            ModelNotFound: no such version.
        """
        async with self._lock:
            if version:
                self._check_exists(version)
            closed = False
            for v in list(self._loaded) if not version else [version]:
                released = self._loaded.pop(v, None)
                self._choose_default()
                if released is not None:
                    await released.close()
                    closed = True
            if closed:
                collect_frozen()

    def reconfigure(self, **limits: float) -> None:
        """Change the batching limits of every loaded version and of versions loaded later.

        Args:
            limits: `BatchingConfig` fields, e.g. `max_batch_size`, `max_queue_delay_ms`.
        """
        self.loader.reconfigure(**limits)

    def batch_limits(self) -> BatchLimits:
        """How the model batches, as its loader says."""
        return self.loader.batch_limits()

    def _choose_default(self) -> None:
        """The default: `default_version` while loaded, else the newest loaded version that is not
        quantized (a quantized variant never becomes the default by being newest), else the newest."""
        chosen = self._loaded.get(self.default_version)
        if chosen is None and self._loaded:
            exact = [
                v for v, loaded in self._loaded.items() if loaded.config is None or loaded.config.quantization is None
            ]
            chosen = self._loaded[max(exact or self._loaded, key=version_key)]
        self._default = chosen

    def _check_exists(self, version: str) -> None:
        available = self.loader.available()
        if version not in available:
            raise ModelNotFound(
                f"model '{self.name}' has no version '{version}'; versions: {', '.join(available) or 'none'}"
            )


class FixedVersions:
    """A `Loader` of a model that is a function of the request (echo, a pipeline): fixed version names,
    nothing to read, nothing to batch."""

    def __init__(self, versions: Iterable[str], infer: Infer) -> None:
        """Args:
        versions: the version names it has.
        infer: answers every version's requests.
        """
        self._versions = list(versions)
        self._infer = infer

    def available(self) -> list[str]:
        """The fixed versions."""
        return list(self._versions)

    async def open(self, version: str, stats: VersionStats) -> LoadedVersion:
        """Nothing to load."""
        return LoadedVersion(version, stats, self._infer)

    def reconfigure(self, **limits: float) -> None:
        """Nothing batches here, so there is nothing to change."""

    def batch_limits(self) -> BatchLimits:
        """No batch dimension: a request's tensors are whatever it sends."""
        return BatchLimits()


class ModelRegistry:
    """The models one server serves, by name."""

    def __init__(self, models: Iterable[ModelVersions]) -> None:
        self._models = {model.name: model for model in models}

    def __iter__(self):
        return iter(self._models.values())

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def get(self, name: str) -> ModelVersions:
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
