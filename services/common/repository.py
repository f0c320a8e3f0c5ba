"""The model repository on disk: `<repo>/<model>/<version>/` with its files and a `config.json`.

A version's config names its tensors, labels, the metrics its training measured, the data it came
from, and the SHA-256 of every file it ships; a version whose files do not match is refused.
Weights are safetensors only: loading a model never runs code from the model files.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.errors import InvalidInput
from services.common.models import TensorSpec, sorted_versions

CONFIG_FILE = "config.json"
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
    except (ValidationError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{config_path}: invalid config: {exc}") from None
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
