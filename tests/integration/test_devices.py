"""A CUDA device asked for where there is none stops a service at start, with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import free_port
from tests.integration.processes import run_failing

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA"),
]


async def run_to_failure(*args: str, env: dict[str, str]) -> str:
    """Run `maas ARGS...` expecting it to fail at start; return its stderr."""
    stdout, stderr = await run_failing(*args, env=env)
    assert b"READY" not in stdout
    assert b"Traceback" not in stderr
    return stderr.decode()


async def test_cuda_without_a_cuda_device_stops_a_service_at_start(model_repository: Path):
    env = {"MAAS_MODEL_REPOSITORY": str(model_repository), "MAAS_TEXT_PORT": "0", "MAAS_TEXT_DEVICE": "cuda"}
    stderr = await run_to_failure("run", "text", env=env)
    assert "text: device 'cuda': torch sees no CUDA device in this process" in stderr


async def test_cuda_on_replicas_that_reserve_no_gpu_stops_the_ray_hosting_before_ray_starts(model_repository: Path):
    env = {
        "MAAS_MODEL_REPOSITORY": str(model_repository),
        "MAAS_RAY_SERVICES": '["vision"]',
        "MAAS_RAY_GRPC_PORT": str(free_port()),
        "MAAS_RAY_HTTP_PORT": str(free_port()),
        "MAAS_VISION_PORT": "0",
        "MAAS_VISION_DEVICE": "cuda:0",
    }
    stderr = await run_to_failure("run", "ray", env=env)
    assert "vision: device 'cuda:0', but a replica reserves no GPU: set MAAS_RAY_REPLICA_NUM_GPUS" in stderr
