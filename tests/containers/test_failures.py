"""What goes wrong fails fast and says so in one line: a missing model repository, a model-repository
image with a tampered file, an image run as root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.containers.podman import READ_ONLY, RUN_FLAGS, chart_services, free_port_pair, one_line, podman, run_once

pytestmark = pytest.mark.containers

TAMPERED = "localhost/maas/model-repository:tampered"


def message(line: str) -> str:
    """A log line's message (the chart's services log JSON)."""
    return json.loads(line)["msg"] if line.startswith("{") else line


def test_a_service_without_its_model_repository_fails_in_one_line(images: dict):
    vision = chart_services()["vision"]
    env = [f"--env={name}={value}" for name, value in vision.bound(free_port_pair()).items()]
    done = run_once(*RUN_FLAGS, *env, vision.image, *vision.command, check=False)
    assert message(one_line(done)) == (
        "vision failed to start: no versions of model 'fashion_cnn' for policy latest (available: none) in "
        "/opt/maas/model_repository/fashion_cnn; run `maas train vision`"
    )


def test_installing_a_missing_model_repository_fails_in_one_line(images: dict, tmp_path: Path):
    vision = chart_services()["vision"]
    command = [*vision.init_command[:3], "/opt/maas/elsewhere", vision.init_mount]
    done = run_once(
        *RUN_FLAGS,
        "--volume",
        f"{tmp_path}:{vision.init_mount}",
        vision.init_image,
        *command,
        check=False,
    )
    assert one_line(done) == "maas models install: no model repository at /opt/maas/elsewhere"


@pytest.fixture
def tampered(images: dict, tmp_path: Path):
    """The model-repository image with one byte of the CNN's weights changed; removed afterwards."""
    weights = "/opt/maas/model_repository/fashion_cnn/1/model.safetensors"
    (tmp_path / "Containerfile").write_text(
        f"FROM {images['model-repository']['image']}\nUSER 0\n"
        f"RUN printf 'X' | dd of={weights} bs=1 seek=4096 conv=notrunc status=none\nUSER 10001:10001\n"
    )
    built = podman("build", "--quiet", "--tag", TAMPERED, str(tmp_path), timeout=300).stdout.strip().splitlines()[-1]
    try:
        yield TAMPERED
    finally:
        podman("rmi", "--force", built, check=False)


def test_a_tampered_model_repository_image_fails_the_init_step_in_one_line(tampered: str, tmp_path: Path):
    vision = chart_services()["vision"]
    delivered = tmp_path / "models"
    delivered.mkdir()
    os.chown(delivered, 10001, 10001)
    done = run_once(
        *RUN_FLAGS,
        "--volume",
        f"{delivered}:{vision.init_mount}",
        tampered,
        *vision.init_command,
        check=False,
    )
    assert one_line(done) == (
        "maas models install: /opt/maas/model_repository/fashion_cnn/1: model.safetensors does not match the "
        "SHA-256 in config.json"
    )
    assert not (delivered / "fashion_cnn" / "1").exists()


@pytest.mark.parametrize("name", ["gateway", "tokenizer", "models", "models-ray", "model-repository"])
def test_an_image_run_as_root_refuses_in_one_line(images: dict, name: str):
    done = run_once(*READ_ONLY, "--user", "0", images[name]["image"], "maas", "run", "gateway", check=False)
    assert one_line(done).startswith("maas: refusing to run as root (uid 0): this image runs as uid 10001")
