"""Model delivery: copy a model repository into the place services read it from, checking every file.

This is what the model-repository image runs on Kubernetes (the storage-initializer pattern): an
init container installs the image's repository into a pod's emptyDir, or a Job installs it into a
shared claim and writes a marker file last, which the pods' init containers wait for.

Every version is checked before and after the copy (`read_version`: its config, no pickle-style
files, the SHA-256 of every file the config lists), and only the config and the files it lists are
copied. The target ends up holding exactly the source's models and versions: a version already
there with the same config and files is kept, others are replaced, and ones the source lacks are
removed. Each version appears all at once (staged, then renamed into place).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from services.common.repository import (
    CONFIG_FILE,
    MODEL_FILE,
    RepositoryError,
    read_model_file,
    read_version,
    version_dirs,
)

MARKER_FILE = ".maas-installed"


def _models(repository: Path) -> list[str]:
    return sorted(p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))


def _same_version(source: Path, target: Path, model: str) -> bool:
    """Whether `target` already holds a sound copy of the version in `source`."""
    if not target.is_dir():
        return False
    try:
        read_version(target, model)
    except RepositoryError:
        return False
    return (source / CONFIG_FILE).read_bytes() == (target / CONFIG_FILE).read_bytes()


def _install_version(source: Path, target: Path, model: str) -> None:
    config = read_version(source, model)
    if _same_version(source, target, model):
        return
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        copy = staging / target.name
        for name in (CONFIG_FILE, *config.files):
            (copy / name).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            shutil.copyfile(source / name, copy / name)
            (copy / name).chmod(0o644)
        read_version(copy, model)
        if target.exists():
            shutil.rmtree(target)
        copy.rename(target)
    finally:
        shutil.rmtree(staging)


def _replace_file(source: Path, target: Path) -> None:
    staging = target.with_name(f".staging-{target.name}")
    shutil.copyfile(source, staging)
    staging.chmod(0o644)
    staging.replace(target)


def install(source: Path, target: Path, marker: str | None = None) -> list[str]:
    """Make `target` hold the models and versions of the repository at `source`, every file checked.

    Args:
        source: the repository to copy (`<source>/<model>/<version>/`).
        target: where services will read it; created if missing.
        marker: written to `<target>/.maas-installed` once everything is in place (the file is
            removed first, so a reader never sees a marker over a half-done copy).

    Returns:
        The versions installed, as `model/version`.

    Raises:
        RepositoryError: the source is missing or holds no versions, or a version in it is unsound
            (a file missing or not matching its recorded SHA-256, an invalid config, a pickle-style file).
    """
    if not source.is_dir():
        raise RepositoryError(f"no model repository at {source}")
    models = {model: version_dirs(source, model) for model in _models(source)}
    if not any(models.values()):
        raise RepositoryError(f"{source} holds no model versions (<model>/<version>/config.json)")
    target.mkdir(parents=True, exist_ok=True)
    (target / MARKER_FILE).unlink(missing_ok=True)
    installed = []
    for model, versions in models.items():
        read_model_file(source, model)
        (target / model).mkdir(exist_ok=True)
        for version in versions:
            _install_version(source / model / version, target / model / version, model)
            installed.append(f"{model}/{version}")
        for stale in set(version_dirs(target, model)) - set(versions):
            shutil.rmtree(target / model / stale)
        if (source / model / MODEL_FILE).is_file():
            _replace_file(source / model / MODEL_FILE, target / model / MODEL_FILE)
        else:
            (target / model / MODEL_FILE).unlink(missing_ok=True)
    for stale in set(_models(target)) - set(models):
        shutil.rmtree(target / stale)
    if marker is not None:
        staging = target / f".staging-{MARKER_FILE}"
        staging.write_text(marker + "\n", encoding="utf-8")
        with staging.open("rb") as handle:
            os.fsync(handle.fileno())
        staging.replace(target / MARKER_FILE)
    return installed


def installed_marker(repository: Path) -> str | None:
    """The marker an install left in `repository`, or None when there is none."""
    try:
        return (repository / MARKER_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def wait_for_install(repository: Path, marker: str, timeout: float, poll_seconds: float = 2.0) -> None:
    """Wait until an install that wrote `marker` has finished in `repository`.

    Raises:
        TimeoutError: it has not within `timeout` seconds (the message says what was found instead).
    """
    deadline = time.monotonic() + timeout
    while (found := installed_marker(repository)) != marker:
        left = deadline - time.monotonic()
        if left <= 0:
            seen = f"a marker for {found!r}" if found else f"no {MARKER_FILE}"
            raise TimeoutError(
                f"{repository}: waited {timeout:g} s for the model repository install of {marker!r}, found {seen}"
            )
        time.sleep(min(poll_seconds, left))
