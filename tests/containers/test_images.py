"""The built images: uid 10001, `maas` on PATH under a read-only root, no torch where none belongs, bash
and wget for KubeRay, the native front in the model images, nothing writable outside /tmp, no compilers, no
pip cache, OCI labels, sizes."""

from __future__ import annotations

import json
import subprocess
import tomllib

import pytest

from tests.conftest import REPO_ROOT
from tests.containers.podman import (
    READ_ONLY,
    REQUIRED,
    RUN_FLAGS,
    optional_images_built_here,
    podman,
    run_once,
)

pytestmark = pytest.mark.containers

IMAGES = [*REQUIRED, *optional_images_built_here()]


@pytest.fixture
def image(images: dict, name: str) -> str:
    """The reference of image `name`."""
    assert name in images, f"build/images.json says {name} was built from this commit; its labels disagree"
    return images[name]["image"]


SIZE_LIMITS = {"gateway": 350e6, "tokenizer": 350e6, "models": 1.8e9, "models-ray": 2.5e9}
TORCH_FREE = {"gateway", "tokenizer", "model-repository"}
# What uid 10001 cannot search (root's home, private keys) it cannot write into either.
WRITABLE_OUTSIDE_TMP = (
    r"find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /tmp \) -prune -o -writable -print 2>&1"
    r" | grep -v ': Permission denied$' || true"
)


def shell(image: str, script: str, *flags: str) -> str:
    """Run `sh -c script` in a new container of `image`; return its stdout.

    Raises:
        subprocess.CalledProcessError: the script failed.
    """
    return run_once(*flags, image, "sh", "-c", script).stdout


@pytest.mark.parametrize("name", IMAGES)
def test_runs_as_uid_10001_with_maas_on_path_under_a_read_only_root(image: str):
    assert podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip() == "10001:10001"
    found = shell(image, "id -u && command -v maas && maas --help >/dev/null", *READ_ONLY)
    assert found.split() == ["10001", "/opt/maas/venv/bin/maas"]
    with pytest.raises(subprocess.CalledProcessError) as refused:
        shell(image, "touch /opt/maas/written", *RUN_FLAGS)
    assert "Read-only file system" in refused.value.stderr


@pytest.mark.parametrize("name", IMAGES)
def test_python_311_and_torch_only_where_it_belongs(image: str, name: str):
    probe = (
        "import importlib.util, json, sys; spec = importlib.util.find_spec('torch'); "
        "torch = spec and __import__('torch'); "
        "print(json.dumps([list(sys.version_info[:2]), torch and torch.__version__, torch and torch.version.cuda, "
        "bool(importlib.util.find_spec('ray'))]))"
    )
    python, torch, cuda, ray = json.loads(run_once(*RUN_FLAGS, image, "python3", "-c", probe).stdout)
    assert python == [3, 11]
    if name in TORCH_FREE:
        assert torch is None and not ray
        return
    assert torch.startswith("2.13.0")
    assert (cuda is not None) == (name == "models-cuda"), cuda
    assert ray == (name == "models-ray")


def test_models_ray_has_the_bash_and_wget_kuberays_probes_run(images: dict):
    out = shell(images["models-ray"]["image"], "bash --version && wget --version", *RUN_FLAGS)
    assert "GNU bash" in out and "GNU Wget" in out


@pytest.mark.parametrize("name", [name for name in IMAGES if name.startswith("models")])
def test_the_model_images_load_the_native_front(image: str, name: str):
    script = "from services.common.front import load_extension; print(load_extension().__name__)"
    assert shell(image, f"python3 -c '{script}'", *READ_ONLY).strip() == "services.common.native._front"


@pytest.mark.parametrize("name", IMAGES)
def test_nothing_outside_tmp_is_writable_by_uid_10001(image: str, name: str):
    # Without --read-only: the image's own files and permissions are what is checked.
    assert shell(image, WRITABLE_OUTSIDE_TMP, "--network=host", "--tmpfs", "/tmp", "--user", "10001") == ""


@pytest.mark.parametrize("name", IMAGES)
def test_no_compilers_and_no_pip_cache(image: str, name: str):
    found = shell(
        image,
        "for tool in cc gcc g++ c++ clang clang++ tcc; do command -v $tool; done; ls /usr/bin /usr/local/bin | "
        "grep -E '^(.*-)?(gcc|g\\+\\+|clang)(-[0-9.]+)?$'; "
        "find / -xdev \\( -path '*/.cache/*' -o -path '/tmp/?*' \\) -print; "
        'test ! -e "$(pip cache dir)" || echo cache',
        "--network=host",
        "--user",
        "0",
    )
    assert found == ""


@pytest.mark.parametrize("name", IMAGES)
def test_oci_labels_name_the_source_version_and_revision(image: str, name: str):
    labels = json.loads(podman("image", "inspect", "--format", "{{json .Labels}}", image).stdout)
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.revision"].startswith(head.stdout.strip())
    assert labels["org.opencontainers.image.title"] == f"maas-{name}"


@pytest.mark.parametrize("name", sorted(SIZE_LIMITS))
def test_uncompressed_size_within_its_budget(image: str, name: str):
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    assert size <= SIZE_LIMITS[name], f"{name}: {size / 1e6:.0f} MB > {SIZE_LIMITS[name] / 1e6:.0f} MB"
