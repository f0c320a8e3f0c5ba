"""The layering rules are executable: `lint-imports` keeps them, and breaking one on purpose fails it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
COPIED = shutil.ignore_patterns("__pycache__", "*.proto")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with `root`'s pyproject.toml, over the packages under `root`."""
    return subprocess.run(
        [LINT_IMPORTS, "--config", root / "pyproject.toml", "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_repository_keeps_every_contract():
    done = lint_imports(REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout


BREAKS = {
    "a model importing grpc": ("services/vision/model.py", "import grpc", "models reach neither grpc nor ray BROKEN"),
    "a model reaching grpc through the errors it raises": (
        "services/common/errors.py",
        "import grpc",
        "models reach neither grpc nor ray BROKEN",
    ),
    "common importing a service": (
        "services/common/batcher.py",
        "from services.vision import spec",
        "services.common names no service BROKEN",
    ),
    "a servicer importing another service": (
        "services/text/servicer.py",
        "from services.vision import servicer",
        "serving modules import no other service but its spec",
    ),
    "the gateway importing ray": ("services/gateway/router.py", "import ray", "only services.ray imports ray BROKEN"),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_breaking_a_contract_on_purpose_fails_lint_imports(case: str, tmp_path: Path):
    path, line, broken = BREAKS[case]
    shutil.copytree(REPO_ROOT / "services", tmp_path / "services", ignore=COPIED)
    shutil.copytree(REPO_ROOT / "protos" / "maas", tmp_path / "maas", ignore=COPIED)
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    assert lint_imports(tmp_path).returncode == 0, "the copy keeps the contracts before it is broken"
    with (tmp_path / path).open("a", encoding="utf-8") as source:
        source.write(f"\n{line}\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert broken in " ".join(done.stdout.split())
