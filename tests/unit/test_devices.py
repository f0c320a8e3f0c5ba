"""Device selection: the `device` setting, its resolution, int8 on a GPU service, Ray replicas."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from services.common.devices import DeviceError, resolve_device, select_device
from services.common.torch_weights import DYNAMIC_INT8, serving_device
from services.ray.replica import replica_device
from services.text.spec import TextSettings
from services.transformer.spec import TransformerSettings
from services.vision.spec import VisionSettings

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


@pytest.mark.parametrize(
    ("requested", "cuda_devices", "device"),
    [
        ("auto", 0, "cpu"),
        ("auto", 2, "cuda:0"),
        ("cpu", 0, "cpu"),
        ("cpu", 2, "cpu"),
        ("cuda", 1, "cuda:0"),
        ("cuda:1", 2, "cuda:1"),
    ],
)
def test_resolution(requested: str, cuda_devices: int, device: str):
    assert resolve_device(requested, cuda_devices) == device


@pytest.mark.parametrize(
    ("requested", "cuda_devices", "message"),
    [
        ("cuda", 0, "torch sees no CUDA device in this process"),
        ("cuda:0", 0, "use auto or cpu"),
        ("cuda:2", 2, "torch sees 2 CUDA device(s), cuda:0 to cuda:1"),
        ("gpu", 1, "expected auto, cpu, cuda or cuda:N"),
        ("cuda:", 1, "expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_resolution_refuses_what_it_cannot_honour(requested: str, cuda_devices: int, message: str):
    with pytest.raises(DeviceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_device(requested, cuda_devices)


@pytest.mark.parametrize(
    ("cls", "prefix"), [(VisionSettings, "VISION"), (TextSettings, "TEXT"), (TransformerSettings, "TRANSFORMER")]
)
def test_each_model_service_reads_its_device_setting(monkeypatch, cls, prefix: str):
    assert cls().device == "auto"
    monkeypatch.setenv(f"MAAS_{prefix}_DEVICE", "cuda:1")
    assert cls().device == "cuda:1"
    monkeypatch.setenv(f"MAAS_{prefix}_DEVICE", "gpu")
    with pytest.raises(ValidationError, match="device"):
        cls()


@NO_CUDA
def test_on_this_machine_auto_and_cpu_are_the_cpu_and_cuda_is_refused():
    assert select_device("auto") == select_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="torch sees no CUDA device"):
        select_device("cuda")


def test_an_int8_version_is_served_on_the_cpu_of_a_cuda_service(caplog):
    cuda = torch.device("cuda:0")
    version = Path("review_lstm/2")
    assert serving_device(cuda, None, version) == cuda
    assert serving_device(torch.device("cpu"), DYNAMIC_INT8, version) == torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger="services.common.torch_weights"):
        assert serving_device(cuda, DYNAMIC_INT8, version) == torch.device("cpu")
    assert "review_lstm/2 is dynamic_int8, which torch runs on a CPU only: serving it on cpu, not cuda:0" in caplog.text


@pytest.mark.parametrize(
    ("requested", "reserves_gpu", "device"),
    [
        ("auto", True, "auto"),
        ("cuda:0", True, "cuda:0"),
        ("cpu", True, "cpu"),
        ("auto", False, "cpu"),
        ("cpu", False, "cpu"),
    ],
)
def test_a_replica_without_a_reserved_gpu_computes_on_the_cpu(requested: str, reserves_gpu: bool, device: str):
    assert replica_device(requested, reserves_gpu) == device


def test_a_replica_without_a_reserved_gpu_refuses_cuda():
    with pytest.raises(DeviceError, match="set MAAS_RAY_REPLICA_NUM_GPUS"):
        replica_device("cuda", reserves_gpu=False)
