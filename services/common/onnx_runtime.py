"""ONNX Runtime as a model platform: versions whose config says `platform: onnxruntime`.

Such a version holds one `.onnx` file (a protobuf graph with its weights inside or in an external-data
file beside it: loading it runs no code from the files) and a `config.json` declaring its tensors like
any version. `OnnxSession` runs one on
ONNX Runtime; the built-in model classes use it in place of their torch network when a version's
platform says so, keeping their own input checks. `OnnxModel` serves any ONNX version on its own,
with the tensors its config declares (`maas serve services.common.onnx_runtime:OnnxModel --name NAME`).

Sessions run with every graph optimization ONNX Runtime has (`ORT_ENABLE_ALL`): constant folding and
redundant-node elimination, the fusions of MatMul+Add, Conv+BatchNorm/ReLU, GELU, LayerNorm and
attention, and on the CPU the NCHWc layout for convolutions. Intra-op threads follow the service's
`num_threads`; operators run one after another (no inter-op pool), and idle pool threads sleep rather
than spin, so they leave the cores to the event loop between batches. The CPU execution provider runs
everything; on a service whose device is `cuda:N`, the CUDA provider runs it on that GPU when this
ONNX Runtime build has one (the `onnxruntime-gpu` wheel), else the version is served on the CPU with
a warning, as int8 versions are.

This module imports neither torch, nor grpc, nor ray.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort

from services.common.errors import InvalidInput, Overloaded
from services.common.model import Arrays, Batching, Parameters, TensorSpec, Version
from services.common.repository import RepositoryError, VersionConfig

log = logging.getLogger(__name__)

ONNXRUNTIME = "onnxruntime"
ONNX_FILE = "model.onnx"
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
GRAPH_OPTIMIZATION = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int16)": "INT16",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}
DEFAULT_MAX_ROWS = 1024


def is_onnx(config: VersionConfig) -> bool:
    """Whether a version runs on ONNX Runtime."""
    return config.platform == ONNXRUNTIME


def providers_for(device: str, available: list[str]) -> list[Any]:
    """The execution providers a session on `device` asks for, most preferred first.

    Args:
        device: the service's device, `cpu` or `cuda:N`.
        available: the providers this ONNX Runtime build has.

    Returns:
        `[CPUExecutionProvider]`, or the CUDA provider on GPU N before it when the device is `cuda:N`
        and the build has it.
    """
    if not device.startswith("cuda") or CUDA_PROVIDER not in available:
        return [CPU_PROVIDER]
    index = int(device.partition(":")[2] or 0)
    return [(CUDA_PROVIDER, {"device_id": index}), CPU_PROVIDER]


def session_options(threads: int) -> ort.SessionOptions:
    """The options every maas session runs with (see the module docstring)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = GRAPH_OPTIMIZATION
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class OnnxSession:
    """One ONNX file on ONNX Runtime: named arrays in, named arrays out."""

    def __init__(self, path: Path, device: str = "cpu", threads: int = 1) -> None:
        """Open `path` on the providers for `device` (see `providers_for`).

        Args:
            path: the `.onnx` file.
            device: `cpu` or `cuda:N`.
            threads: intra-op threads.

        Raises:
            RepositoryError: ONNX Runtime cannot load the file (the message says why).
        """
        available = ort.get_available_providers()
        providers = providers_for(device, available)
        if device.startswith("cuda") and CUDA_PROVIDER not in available:
            log.warning("%s: this onnxruntime has no CUDA provider (%s): serving it on cpu", path, available)
        try:
            self._session = ort.InferenceSession(str(path), session_options(threads), providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own unexported exception types.
            raise RepositoryError(f"{path}: ONNX Runtime cannot load it: {exc}") from None
        self.device = device if CUDA_PROVIDER in self._session.get_providers() else "cpu"
        self.inputs = {i.name: (DATATYPES.get(i.type, i.type), len(i.shape)) for i in self._session.get_inputs()}
        self.outputs = {o.name: (DATATYPES.get(o.type, o.type), len(o.shape)) for o in self._session.get_outputs()}
        self._output_names = list(self.outputs)

    @classmethod
    def of(cls, version: Version) -> OnnxSession:
        """The session of a version's `.onnx` file, on its device, with the service's `num_threads`.

        The config lists exactly one `.onnx` file (`model.onnx` when maas exports it), and beside it any
        external-data file the graph names (what `torch.onnx.export` writes for large weights, e.g.
        `model.onnx.data`): every listed file is checked against its SHA-256 before this runs.

        Raises:
            RepositoryError: the config lists no or several `.onnx` files, or ONNX Runtime cannot load it.
        """
        graphs = [name for name in version.config.files if name.endswith(".onnx")]
        if len(graphs) != 1:
            raise RepositoryError(
                f"{version.directory}: platform {ONNXRUNTIME} needs exactly one .onnx file in config.json's files, "
                f"got {graphs or 'none'}"
            )
        threads = getattr(version.settings, "num_threads", 1)
        return cls(version.directory / graphs[0], version.device, threads)

    def check(self, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], where: Path) -> None:
        """Check the graph takes and gives the declared tensors (names, datatypes and ranks).

        Raises:
            RepositoryError: they differ (the message lists both).
        """
        for kind, graph, specs in (("inputs", self.inputs, inputs), ("outputs", self.outputs, outputs)):
            declared = {spec.name: (spec.datatype, len(spec.shape)) for spec in specs}
            if graph != declared:
                raise RepositoryError(
                    f"{where}: the ONNX graph's {kind} are {graph} (name: (datatype, rank)), "
                    f"but config.json declares {declared}"
                )

    def run(self, feeds: Arrays) -> Arrays:
        """Every output of the graph for `feeds` (one array per graph input)."""
        results = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, results, strict=True))

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        """The graph's first output for its inputs given in order."""
        return self.run(dict(zip(self.inputs, arrays, strict=True)))[self._output_names[0]]


class OnnxModel:
    """Any ONNX version, served with the tensors its config declares (a model class for `maas serve`).

    Its tensors come from the newest version's `config.json` (`inputs = None`); `--name` names the
    model. Each request is checked before it joins a batch: no rows, more rows than the service's
    `max_rows`, NaN or Inf in a float input, and values outside an input's declared `range` are refused.
    Variable dimensions past the first are not padded: requests batch together when their other
    dimensions agree.
    """

    name: ClassVar[str] = ""
    platform: ClassVar[str] = ONNXRUNTIME
    inputs: ClassVar[tuple[TensorSpec, ...] | None] = None
    outputs: ClassVar[tuple[TensorSpec, ...] | None] = None
    batching: ClassVar[Batching] = Batching()

    def __init__(self, session: OnnxSession, config: VersionConfig, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.session = session
        self.device = session.device
        self.max_rows = max_rows
        self._ranges = {tensor.name: tensor.range for tensor in config.inputs if tensor.range is not None}

    @classmethod
    def load(cls, version: Version) -> OnnxModel:
        """The version's `model.onnx`, checked against its config's tensors.

        Raises:
            RepositoryError: the file is missing or unloadable, or its tensors differ from the config's.
        """
        config = version.config
        if not is_onnx(config):
            raise RepositoryError(f"{version.directory}: platform {config.platform!r} is not {ONNXRUNTIME!r}")
        session = OnnxSession.of(version)
        session.check(
            tuple(t.spec() for t in config.inputs), tuple(t.spec() for t in config.outputs), version.directory
        )
        return cls(session, config, getattr(version.settings, "max_rows", DEFAULT_MAX_ROWS))

    def prepare(self, inputs: Arrays, parameters: Parameters) -> Arrays:
        """Refuse empty or oversized requests, rows that differ between inputs, NaN/Inf, values out of range.

        Raises:
            InvalidInput: see the class docstring.
            Overloaded: more rows than `max_rows`.
        """
        rows = {name: array.shape[0] for name, array in inputs.items()}
        if len(set(rows.values())) > 1:
            raise InvalidInput(f"inputs hold different numbers of rows: {rows}", field="inputs")
        count = next(iter(rows.values()))
        if count == 0:
            raise InvalidInput("the request holds no rows", field="inputs")
        if count > self.max_rows:
            raise Overloaded(f"{count} rows; the limit is {self.max_rows} per request", field="inputs")
        for name, array in inputs.items():
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise InvalidInput(f"input '{name}' holds NaN or Inf", field=f"inputs[{name}]")
            if name in self._ranges:
                low, high = self._ranges[name]
                smallest, largest = array.min(), array.max()
                if smallest < low or largest > high:
                    raise InvalidInput(
                        f"input '{name}' values must lie in [{low:g}, {high:g}]; got [{smallest:g}, {largest:g}]",
                        field=f"inputs[{name}]",
                    )
        return inputs

    def predict(self, batch: Arrays) -> Arrays:
        """Every output of the graph for a batch."""
        return self.session.run(batch)
