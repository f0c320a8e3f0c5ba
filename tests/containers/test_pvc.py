"""`modelRepository.source: pvc` from the images, as the chart renders it: the hook Job fills a directory
standing for the ReadWriteMany claim, each pod's init container (the pod's own image) waits for the Job's
marker with the claim mounted read-only, and every service then serves from the claim, read-only."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.chart.conftest import of_kind, render
from tests.conftest import REPO_ROOT
from tests.containers.podman import (
    RUN_FLAGS,
    ChartService,
    Container,
    chart_services,
    containers,
    free_port_pair,
    one_line,
    run_once,
    start,
    wait_serving,
)

pytestmark = pytest.mark.containers

PVC = ("modelRepository.source=pvc",)
MARKER_FILE = ".maas-installed"
START_TIMEOUT_SECONDS = 180.0
REPOSITORY = REPO_ROOT / "model_repository"


def run_job(claim: Path) -> subprocess.CompletedProcess:
    """Run the chart's model-repository Job's container with `claim` mounted where the Job mounts the claim."""
    (job,) = of_kind(render(None, *PVC), "Job")
    (box,) = job["spec"]["template"]["spec"]["containers"]
    (mount,) = [mount for mount in box["volumeMounts"] if mount["name"] == "models"]
    command = [*box["command"], *map(str, box["args"])]
    return run_once(*RUN_FLAGS, "--volume", f"{claim}:{mount['mountPath']}", box["image"], *command)


def wait_for_job(service: ChartService, claim: Path, timeout: str) -> subprocess.CompletedProcess:
    """Run the service's init container with `claim` mounted read-only, its `--timeout` cut to `timeout`."""
    command = list(service.init_command)
    command[command.index("--timeout") + 1] = timeout
    volume = f"{claim}:{service.init_mount}:ro"
    return run_once(*RUN_FLAGS, "--volume", volume, service.init_image, *command, check=False)


def test_pods_wait_for_the_jobs_marker_then_serve_from_the_claim_read_only(images: dict, tmp_path: Path):
    services = {name: service for name, service in chart_services(*PVC).items() if service.init_image}
    assert set(services) == {"tokenizer", "vision", "text", "transformer"}
    assert all(service.init_image == service.image for service in services.values())
    marker = images["model-repository"]["image"]
    path = services["vision"].init_mount
    claim = tmp_path / "claim"
    claim.mkdir()
    os.chown(claim, 10001, 10001)

    assert one_line(wait_for_job(services["tokenizer"], claim, timeout="1")) == (
        f"maas models wait: {path}: waited 1 s for the model repository install of {marker!r}, found no {MARKER_FILE}"
    )
    assert run_job(claim).stdout.endswith(" from /opt/maas/model_repository into /mnt/model-repository\n")
    assert (claim / MARKER_FILE).read_text() == f"{marker}\n"
    copied = {path.relative_to(claim) for path in claim.rglob("*") if path.is_file()} - {Path(MARKER_FILE)}
    versions = {path.parent.relative_to(REPOSITORY) for path in REPOSITORY.glob("*/*/config.json")}
    assert {path.parent for path in copied if path.name == "config.json"} == versions
    assert all((claim / path).read_bytes() == (REPOSITORY / path).read_bytes() for path in copied)

    with containers() as started:
        for name, service in services.items():
            waited = wait_for_job(service, claim, timeout="10")
            assert waited.returncode == 0 and waited.stdout == f"{path}: model repository {marker} is installed\n"
            port = free_port_pair()
            started.append(Container(start(service, port, claim, None), name, f"127.0.0.1:{port}"))
        for container in started:
            try:
                wait_serving(container.address, START_TIMEOUT_SECONDS, container.running)
            except TimeoutError as exc:
                pytest.fail(f"{container.service}: {exc}\n{container.logs()}")
