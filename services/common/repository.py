"""The model repository on disk: `<repo>/<model>/<version>/` with its files and a `config.json`.

A version's config names its tensors, labels, the metrics its training measured, the data it came
from, and the SHA-256 of every file it ships; a version whose files do not match is refused.
Weights are safetensors only: loading a model never runs code from the model files.

An optional `<repo>/<model>/model.json` sets which versions a server loads (`version_policy`:
`latest`, `latest:N`, `all`, `specific:1,3`; default `latest`) and which of them answers requests
that name no version (`default_version`; default: the newest loaded version that is not quantized), e.g.
`{"version_policy": "latest:2", "default_version": "1"}`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.common.errors import InvalidInput
from services.common.model import TensorSpec

CONFIG_FILE = "config.json"
MODEL_FILE = "model.json"
ONNXRUNTIME = "onnxruntime"
FORBIDDEN_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy", ".npz")


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


def version_key(version: str) -> tuple[int, str]:
    """Sort key of a version name: numeric, names that are not numbers first."""
    return (int(version), "") if version.isdigit() else (-1, version)


def sorted_versions(versions: Iterable[str]) -> list[str]:
    """Sort version names numerically, oldest first."""
    return sorted(versions, key=version_key)


class RepositoryError(InvalidInput):
    """A version directory is unusable; the message says which file and why (INVALID_ARGUMENT, as Triton
    answers a failed load)."""


class TensorConfig(BaseModel):
    """A declared tensor in a version's config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    datatype: str
    shape: list[int]
    optional: bool = False
    range: tuple[float, float] | None = Field(None, description="Inclusive value range, if bounded.")

    @classmethod
    def of(cls, spec: TensorSpec) -> TensorConfig:
        """The config entry of a served tensor."""
        return cls(name=spec.name, datatype=spec.datatype, shape=list(spec.shape), optional=spec.optional)

    def spec(self) -> TensorSpec:
        """The servicer-side spec of this tensor."""
        return TensorSpec(self.name, self.datatype, tuple(self.shape), self.optional)


class VersionConfig(BaseModel):
    """`config.json` of one model version."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str
    version: int = Field(ge=1)
    platform: str
    architecture: dict[str, Any] = Field(
        default_factory=dict, description="Which network the serving code builds, and its hyperparameters."
    )
    inputs: list[TensorConfig]
    outputs: list[TensorConfig]
    labels: list[str] = []
    metrics: dict[str, float] = {}
    data: dict[str, Any] = Field(default_factory=dict, description="Provenance: what the version was made from.")
    quantization: str | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    files: dict[str, str] = Field(description="File name -> SHA-256 of its bytes.")

    def check_tensors(self, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
        """Check the config declares exactly the tensors the serving code expects.

        Raises:
            RepositoryError: they differ.
        """
        declared = ([t.spec() for t in self.inputs], [t.spec() for t in self.outputs])
        if declared != (list(inputs), list(outputs)):
            raise RepositoryError(
                f"{self.name} version {self.version}: config declares inputs {declared[0]} and outputs "
                f"{declared[1]}, but this server serves inputs {list(inputs)} and outputs {list(outputs)}"
            )

    def network(self, name: str, directory: Path) -> dict[str, Any]:
        """The `architecture` entry, checked to name the network the serving code builds.

        Args:
            name: the architecture the serving code builds.
            directory: the version's directory (named in the message).

        Raises:
            RepositoryError: the config names another architecture.
        """
        if self.architecture.get("name") != name:
            raise RepositoryError(f"{directory}: architecture {self.architecture.get('name')!r} is not {name!r}")
        return self.architecture


class ModelFile(BaseModel):
    """`<repo>/<model>/model.json`: settings of the model across versions."""

    model_config = ConfigDict(extra="forbid")

    version_policy: str = Field("latest", description="Which versions a server loads.")
    default_version: str = Field(
        "",
        pattern=r"^([1-9][0-9]*)?$",
        description="The version that answers requests naming none, while it is loaded; empty: the newest loaded "
        "version that is not quantized.",
    )

    @field_validator("version_policy")
    @classmethod
    def _parses(cls, value: str) -> str:
        VersionPolicy.parse(value)
        return value

    @property
    def policy(self) -> VersionPolicy:
        """The parsed version policy."""
        return VersionPolicy.parse(self.version_policy)


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())


def read_model_file(repository: Path, model: str) -> ModelFile:
    """`<repository>/<model>/model.json`, or the defaults without one.

    Raises:
        RepositoryError: the file is not valid.
    """
    path = repository / model / MODEL_FILE
    if not path.is_file():
        return ModelFile()
    try:
        return ModelFile.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise RepositoryError(f"{path}: {_describe(exc)}") from None


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def version_dirs(repository: Path, model: str) -> list[str]:
    """Versions of `model` present in `repository` (integer-named directories), oldest first."""
    root = repository / model
    if not root.is_dir():
        return []
    return sorted_versions(p.name for p in root.iterdir() if p.is_dir() and p.name.isdigit() and p.name[0] != "0")


def newest_version(repository: Path, model: str, hint: str = "") -> Path:
    """The directory of the newest version of `model`.

    Args:
        repository: repository root.
        model: model name.
        hint: how to make a version, for the message (e.g. "run `maas models export-tokenizer`").

    Raises:
        FileNotFoundError: the repository holds no version of `model`.
    """
    versions = version_dirs(repository, model)
    if not versions:
        raise FileNotFoundError(f"no {model} in {repository}" + (f": {hint}" if hint else ""))
    return repository / model / versions[-1]


def is_torch_source(config: VersionConfig) -> bool:
    """Whether a version holds fp32 torch weights: what training, quantization and ONNX export start from
    (not quantized at load, not an ONNX graph)."""
    return config.quantization is None and config.platform != ONNXRUNTIME


def newest_source(repository: Path, model: str, hint: str = "") -> Path:
    """The directory of the newest version of `model` holding fp32 torch weights (see `is_torch_source`).

    Raises:
        FileNotFoundError: there is none.
    """
    for version in reversed(version_dirs(repository, model)):
        directory = repository / model / version
        if is_torch_source(read_version(directory, model)):
            return directory
    raise FileNotFoundError(f"no fp32 torch version of {model} in {repository}" + (f": {hint}" if hint else ""))


def serve_beside(repository: Path, model: str, source: str) -> None:
    """Keep serving what was served, and the version just published beside it.

    A version derived from another (quantized, exported, pruned) is served to requests that name it;
    serving it by default is the operator's choice (`default_version` in `model.json`). Without a
    `model.json` the model gets one serving the newest two versions with `source` as the default; with
    one, a `latest:N` policy grows to `latest:N+1` and an unset default becomes `source`.

    Args:
        repository: repository root.
        model: model name.
        source: the version the new one was derived from.
    """
    path = repository / model / MODEL_FILE
    if not path.exists():
        model_file = ModelFile(version_policy="latest:2", default_version=source)
    else:
        model_file = read_model_file(repository, model)
        policy = model_file.policy
        if policy.kind == "latest":
            model_file.version_policy = f"latest:{policy.count + 1}"
        elif policy.kind == "specific":
            model_file.version_policy = f"specific:{','.join([*policy.versions, version_dirs(repository, model)[-1]])}"
        model_file.default_version = model_file.default_version or source
    path.write_text(model_file.model_dump_json() + "\n", encoding="utf-8")


def write_version(directory: Path, config: VersionConfig) -> None:
    """Write `config.json` into `directory`, recording the SHA-256 of each file it lists."""
    config.files = {name: sha256_of(directory / name) for name in config.files}
    (directory / CONFIG_FILE).write_text(config.model_dump_json(indent=2) + "\n", encoding="utf-8")


def publish_version(repository: Path, config: VersionConfig, write_files: Callable[[Path], None]) -> Path:
    """Write a new version as `<repository>/<name>/<next version>/`, appearing all at once.

    The files are written to a hidden staging directory first, then renamed into place, so a server
    listing versions never sees a half-written one. `config.version` is set to the next free number.

    Args:
        repository: repository root.
        config: the version's config; its `files` name what `write_files` writes.
        write_files: writes the version's files into the directory it is given.

    Returns:
        The published version directory.
    """
    root = repository / config.name
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    write_files(staging)
    existing = version_dirs(repository, config.name)
    config.version = int(existing[-1]) + 1 if existing else 1
    write_version(staging, config)
    for path in staging.iterdir():
        path.chmod(0o644)
    staging.chmod(0o755)
    target = root / str(config.version)
    staging.rename(target)
    return target


def read_version(directory: Path, model: str) -> VersionConfig:
    """Read and check a version directory: its config, its files and their hashes.

    Raises:
        RepositoryError: no or invalid config, a name or version that does not match the directory,
            a pickle-style file present, or a listed file missing or changed.
    """
    config_path = directory / CONFIG_FILE
    try:
        config = VersionConfig.model_validate_json(config_path.read_bytes())
    except FileNotFoundError:
        raise RepositoryError(f"{directory}: no {CONFIG_FILE}") from None
    except ValidationError as exc:
        raise RepositoryError(f"{config_path}: invalid config: {_describe(exc)}") from None
    except json.JSONDecodeError as exc:
        raise RepositoryError(f"{config_path}: not JSON: {exc}") from None
    if config.name != model or str(config.version) != directory.name:
        raise RepositoryError(
            f"{config_path}: says {config.name} version {config.version}, but lives in {model}/{directory.name}"
        )
    unsafe = sorted(p.name for p in directory.rglob("*") if p.suffix in FORBIDDEN_SUFFIXES)
    if unsafe:
        raise RepositoryError(
            f"{directory}: refusing {', '.join(unsafe)}: pickle-style files can run code when loaded; "
            "weights must be safetensors"
        )
    for name, expected in config.files.items():
        path = directory / name
        if not path.is_file():
            raise RepositoryError(f"{directory}: {name} is listed in {CONFIG_FILE} but missing")
        if sha256_of(path) != expected:
            raise RepositoryError(f"{directory}: {name} does not match the SHA-256 in {CONFIG_FILE}")
    return config


def publish_quantized(
    repository: Path, model: str, scheme: str, measure: Callable[[Path, VersionConfig], tuple[dict, dict]]
) -> Path:
    """Publish the newest fp32 torch version of `model` again as the next version, quantized by `scheme`.

    The weights are copied unchanged (plain tensors in safetensors); the new config records the
    scheme, and the serving code quantizes at load. The quantized version is served beside the versions
    served before (`serve_beside`).

    Args:
        repository: repository root.
        model: model name.
        scheme: the quantization scheme to record (e.g. `dynamic_int8`).
        measure: given the source version's directory and config, returns the quantized model's
            metrics and extra provenance to record.

    Returns:
        The new version's directory.

    Raises:
        FileNotFoundError: the model has no fp32 torch version to start from.
    """
    sources = [
        (directory, read_version(directory, model))
        for directory in (repository / model / v for v in reversed(version_dirs(repository, model)))
    ]
    source = next(((d, c) for d, c in sources if is_torch_source(c)), None)
    if source is None:
        raise FileNotFoundError(f"no fp32 torch version of {model} in {repository} to quantize")
    directory, config = source
    metrics, provenance = measure(directory, config)
    quantized = config.model_copy(
        update={
            "quantization": scheme,
            "metrics": metrics,
            "data": {**config.data, "quantized_from": f"{model}/{directory.name}", **provenance},
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": dict.fromkeys(config.files, ""),
        },
        deep=True,
    )

    def copy_files(staging: Path) -> None:
        for name in config.files:
            shutil.copyfile(directory / name, staging / name)

    published = publish_version(repository, quantized, copy_files)
    serve_beside(repository, model, directory.name)
    return published
