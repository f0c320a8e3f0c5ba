"""What a model is: one class with a small lifecycle, and the tensors it declares.

A model class, built-in or your own, is plain Python (no base class to inherit):

```python
class Doubler:
    name = "doubler"                                    # the v2 model name
    inputs = (TensorSpec("X", "FP32", (-1, 4)),)        # rows first: -1 is the batch dimension
    outputs = (TensorSpec("Y", "FP32", (-1, 4)),)
    batching = Batching()                               # optional; None runs each request alone

    @classmethod
    def load(cls, version: Version) -> Doubler:         # one loaded version, on version.device
        return cls(load_file(version.directory / "weights.safetensors")["scale"])

    def prepare(self, inputs: Arrays, parameters: Parameters) -> Arrays:   # optional
        return inputs                                   # check values; raise InvalidInput / Overloaded

    def predict(self, batch: Arrays) -> Arrays:         # batch in, batch out, one output row per input row
        return {"Y": batch["X"] * self.scale}

    def close(self) -> None:                            # optional: release what load took
        ...
```

- `load` runs on a worker thread, once per version, with the version's directory and checked config.
  The version then runs once on example inputs of its required inputs (`services.common.examples`)
  before it is served: its warm-up.
- `prepare` runs per request on the event loop, before the request joins a batch: cheap checks only.
- `predict` of a batched model runs on the version's worker thread, on requests batched together;
  an unbatched model (`batching = None`, e.g. a tokenizer) runs `predict` per request on the event loop,
  and its `prepare` may hand `predict` any values, not only arrays.
- `close` runs once the version is unloaded and its queued requests are answered.

This module imports neither grpc, nor ray, nor torch: model code depends on it and on nothing of the
serving stack.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import numpy as np

from services.common.errors import InvalidInput

if TYPE_CHECKING:
    from services.common.codec import Tensor
    from services.common.repository import VersionConfig

Arrays = dict[str, np.ndarray]
Parameter = bool | int | float | str
Parameters = Mapping[str, Parameter]
T = TypeVar("T")


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


@dataclass(frozen=True)
class Batching:
    """How a model's requests batch together (the limits come from the service's settings).

    Attributes:
        pad: inputs whose second dimension is a sequence, with the value they are padded with.
        inline_when_idle: run a lone request on the event loop's thread when the model is idle,
            skipping the worker-thread round trip (about 0.2 ms): only for models that take well under
            a millisecond per batch.
    """

    pad: Mapping[str, int] = field(default_factory=dict)
    inline_when_idle: bool = False


class SharedPool:
    """Objects several loaded versions share (one MiniLM encoder under two models), counted by holder.

    An object lives while a version that took it is loaded: the last version to let go drops it.
    """

    def __init__(self) -> None:
        self._objects: dict[Hashable, tuple[Any, int]] = {}
        self._lock = threading.Lock()

    def take(self, key: Hashable, make: Callable[[], T]) -> T:
        """The object under `key`, made by `make` if no holder has it yet; the caller must `drop` it.

        Raises:
            Exception: whatever `make` raised (nothing is kept).
        """
        with self._lock:
            if key in self._objects:
                shared, holders = self._objects[key]
                self._objects[key] = (shared, holders + 1)
                return shared
            shared = make()
            self._objects[key] = (shared, 1)
            return shared

    def drop(self, key: Hashable) -> None:
        """Let go of one hold on `key`; the last one drops the object."""
        with self._lock:
            shared, holders = self._objects.pop(key)
            if holders > 1:
                self._objects[key] = (shared, holders - 1)


class Version:
    """One version being loaded: where it is, what its config says, where to compute, the settings of the
    service that serves it, and the objects it shares with other versions."""

    def __init__(
        self, name: str, directory: Path, config: VersionConfig, device: str, settings: Any, pool: SharedPool
    ) -> None:
        """Args:
        name: the model name it is served under.
        directory: the version directory (`<repo>/<model>/<version>/`).
        config: its checked `config.json`.
        device: where to load weights and compute: `cpu` or `cuda:N`.
        settings: the service's settings (limits such as `max_texts` live there).
        pool: the service's shared objects.
        """
        self.name = name
        self.directory = directory
        self.config = config
        self.device = device
        self.settings = settings
        self._pool = pool
        self._taken: list[Hashable] = []

    def share(self, key: Hashable, make: Callable[[], T]) -> T:
        """An object shared with the service's other loaded versions, made by `make` on first use and
        dropped when the last version holding it is unloaded.

        Args:
            key: what identifies the object (e.g. the directory and quantization of an encoder).
            make: builds it.

        Returns:
            The shared object.
        """
        shared = self._pool.take(key, make)
        self._taken.append(key)
        return shared

    def release(self) -> None:
        """Let go of every shared object this version took (after the model's `close`)."""
        while self._taken:
            self._pool.drop(self._taken.pop())


class Model(Protocol):
    """The lifecycle a model class follows (see the module docstring). `prepare` and `close` are optional."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[TensorSpec, ...]]
    outputs: ClassVar[tuple[TensorSpec, ...]]

    @classmethod
    def load(cls, version: Version) -> Model:
        """Load one version: weights from `version.directory`, onto `version.device`.

        Raises:
            RepositoryError: the files do not fit the config (the message says which and why).
        """

    def predict(self, batch: Arrays) -> Arrays:
        """Outputs for a batch: every output holds one row per input row."""
