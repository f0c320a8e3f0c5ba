"""The model repository on disk: `<repo>/<model>/<version>/` with its files and a `config.json`.

A version's config names its tensors, labels, the metrics its training measured, the data it came
from, and the SHA-256 of every file it ships; a version whose files do not match is refused.
Weights are safetensors only: loading a model never runs code from the model files.

An optional `<repo>/<model>/model.json` sets the model's version policy, e.g.
`{"version_policy": "latest:2"}` (also `latest`, `all`, `specific:1,3`; default `latest`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import tempfile
from abc import abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.common.errors import InvalidInput, ModelNotFound
from services.common.models import TensorSpec, VersionedModel, VersionPolicy, sorted_versions

CONFIG_FILE = "config.json"
MODEL_FILE = "model.json"
FORBIDDEN_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy", ".npz")


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


class ModelFile(BaseModel):
    """`<repo>/<model>/model.json`: settings of the model across versions."""

    model_config = ConfigDict(extra="forbid")

    version_policy: str = "latest"

    @field_validator("version_policy")
    @classmethod
    def _parses(cls, value: str) -> str:
        VersionPolicy.parse(value)
        return value


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())


def read_policy(repository: Path, model: str) -> VersionPolicy:
    """The version policy in `<repository>/<model>/model.json`, or `latest` without one.

    Raises:
        RepositoryError: the file is not valid.
    """
    path = repository / model / MODEL_FILE
    if not path.is_file():
        return VersionPolicy()
    try:
        return VersionPolicy.parse(ModelFile.model_validate_json(path.read_bytes()).version_policy)
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


class RepositoryModel(VersionedModel):
    """A model served from `<repo>/<name>/<version>/`: each version's config and files are checked,
    then `build` turns the directory into what serves it."""

    missing_hint = ""

    def __init__(self, repository: Path) -> None:
        """Read the model's version policy from the repository.

        Raises:
            RepositoryError: `model.json` is invalid.
        """
        super().__init__(read_policy(repository, self.name))
        self.repository = repository
        self.configs: dict[str, VersionConfig] = {}

    def available_versions(self) -> list[str]:
        """Versions present under `<repository>/<name>/`."""
        return version_dirs(self.repository, self.name)

    def default_versions(self) -> list[str]:
        """The policy's versions.

        Raises:
            ModelNotFound: the repository holds no version of the model, or none the policy selects.
        """
        versions = super().default_versions()
        if not versions:
            raise ModelNotFound(
                f"no versions of model '{self.name}' in {self.repository / self.name} for policy "
                f"{self.policy.kind}{self.missing_hint}"
            )
        return versions

    async def load_version(self, version: str) -> Any:
        """Check the version directory against its config and the served tensors, then build it.

        Raises:
            RepositoryError: the directory or config is unusable (the message says why).
        """
        directory = self.repository / self.name / version
        config = await asyncio.to_thread(read_version, directory, self.name)
        config.check_tensors(self.inputs, self.outputs)
        built = await asyncio.to_thread(self.build, directory, config)
        self.configs[version] = config
        return built

    async def release_version(self, version: str, loaded: Any) -> None:
        """Forget the unloaded version's config."""
        self.configs.pop(version, None)

    @abstractmethod
    def build(self, directory: Path, config: VersionConfig) -> Any:
        """Load a checked version directory (runs on a worker thread).

        Raises:
            RepositoryError: the files do not match the config.
        """


def publish_quantized(
    repository: Path, model: str, scheme: str, measure: Callable[[Path, VersionConfig], tuple[dict, dict]]
) -> Path:
    """Publish the newest unquantized version of `model` again as the next version, quantized by `scheme`.

    The weights are copied unchanged (plain tensors in safetensors); the new config records the
    scheme, and the serving code quantizes at load. A model without a `model.json` gets one with
    the policy `latest:2`, so the quantized version is served beside the one it came from.

    Args:
        repository: repository root.
        model: model name.
        scheme: the quantization scheme to record (e.g. `dynamic_int8`).
        measure: given the source version's directory and config, returns the quantized model's
            metrics and extra provenance to record.

    Returns:
        The new version's directory.

    Raises:
        FileNotFoundError: the model has no unquantized version to start from.
    """
    sources = [
        (directory, read_version(directory, model))
        for directory in (repository / model / v for v in reversed(version_dirs(repository, model)))
    ]
    source = next(((d, c) for d, c in sources if c.quantization is None), None)
    if source is None:
        raise FileNotFoundError(f"no unquantized version of {model} in {repository} to quantize")
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
    policy = repository / model / MODEL_FILE
    if not policy.exists():
        policy.write_text(ModelFile(version_policy="latest:2").model_dump_json() + "\n", encoding="utf-8")
    return published
