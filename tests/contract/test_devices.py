"""The model services on the device their `device` setting picks: `cpu`, and `auto` (the CPU on a
machine where torch sees no CUDA device); the device of every loaded version is logged and exported."""

from __future__ import annotations

import logging
import re
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from services.catalog import SERVICES
from services.common.server import build_server
from tests.conftest import SETTINGS, started

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="`auto` is the CPU only without CUDA")

IDS = np.array([[101, 2307, 11937, 16329, 102]], dtype=np.int64)
IMAGE = np.full((1, 1, 28, 28), 0.5, dtype=np.float32)

CASES = {
    "vision": {"fashion_cnn": ["1"]},
    "text": {"review_lstm": ["1", "2"]},
    "transformer": {"minilm_embed": ["1"], "minilm_sentiment": ["1"]},
}


def infer_request(model: str) -> v2pb.ModelInferRequest:
    request = v2pb.ModelInferRequest(model_name=model)
    inputs = {"IMAGE": IMAGE} if model == "fashion_cnn" else {"INPUT_IDS": IDS, "ATTENTION_MASK": np.ones_like(IDS)}
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype="FP32" if array.dtype == np.float32 else "INT64", shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


def devices_exported(port: int) -> set[tuple[str, str, str]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    pattern = r'^maas_model_version_device\{device="([^"]+)",model="([^"]+)",version="([^"]+)"\} 1\.0$'
    return {(model, version, device) for device, model, version in re.findall(pattern, text, re.M)}


@pytest.mark.parametrize("device", ["cpu", "auto"])
@pytest.mark.parametrize("service", sorted(CASES))
async def test_a_model_service_serves_on_the_cpu_and_says_so(
    model_repository: Path, service: str, device: str, caplog: pytest.LogCaptureFixture
):
    settings = SETTINGS[service](model_repository).model_copy(update={"device": device})
    server = build_server(SERVICES[service], settings)
    with caplog.at_level(logging.INFO, logger="services.common.batched"):
        async with started(server), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for model, versions in CASES[service].items():
                for version in versions:
                    request = infer_request(model)
                    request.model_version = version
                    response = await v2.ModelInfer(request, timeout=30)
                    values = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(response.outputs[0].shape)
                    assert np.isfinite(values).all() and values.shape[0] == 1
                    if model != "minilm_embed":
                        assert values.sum() == pytest.approx(1.0, abs=1e-5)
                    assert (model, version, "cpu") in devices_exported(server.metrics_port)
                    assert f"{model} version {version} loaded on cpu" in caplog.text
