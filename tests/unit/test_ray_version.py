"""Ray's private attributes are read in one module, `services/ray/front.py`, written for one Ray: under any
other it refuses to import, saying what to do."""

from __future__ import annotations

import subprocess

import ray

from tests.conftest import PYTHON, REPO_ROOT

IMPORT_UNDER = "import ray; ray.__version__ = {version!r}; import services.ray.front"


def import_front_under(version: str) -> subprocess.CompletedProcess:
    """Import the front in a fresh process whose Ray reports `version`."""
    return subprocess.run(
        [PYTHON, "-c", IMPORT_UNDER.format(version=version)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_front_imports_under_the_installed_ray():
    done = import_front_under(ray.__version__)
    assert done.returncode == 0, done.stderr


def test_the_front_refuses_another_ray_with_what_to_do():
    done = import_front_under("2.61.0")
    assert done.returncode == 1
    assert f"RuntimeError: the ray hosting's front reads private attributes of Ray {ray.__version__}" in done.stderr, (
        done.stderr
    )
    assert f"Ray 2.61.0 is installed: install ray[serve]=={ray.__version__}" in done.stderr
