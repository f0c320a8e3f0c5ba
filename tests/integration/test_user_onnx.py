"""A user's own `.onnx` file, exported from a small torch module here, published into a repository with a
config and served by `maas serve services.common.onnx_runtime:OnnxModel` as a user runs it."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from torch import nn

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.common.onnx_runtime import ONNXRUNTIME
from services.common.repository import TensorConfig, VersionConfig, publish_version
from services.common.server import build_server
from services.common.spec import user_spec
from tests.conftest import started
from tests.contract.test_v2_echo import assert_status
from tests.integration.processes import maas_process, run_failing

pytestmark = pytest.mark.slow
NAME = "tiny-mlp"
REFERENCE = "services.common.onnx_runtime:OnnxModel"
FEATURES = 6


def mlp() -> nn.Module:
    """A small classifier with seeded weights: FEATURES in [-10, 10] -> 3 probabilities."""
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, 3), nn.Softmax(dim=1)).eval()


def config(inputs: list[TensorConfig], files: list[str]) -> VersionConfig:
    return VersionConfig(
        name=NAME,
        version=1,
        platform=ONNXRUNTIME,
        inputs=inputs,
        outputs=[TensorConfig(name="PROBABILITIES", datatype="FP32", shape=[-1, 3])],
        labels=["a", "b", "c"],
        files=dict.fromkeys(files, ""),
    )


def export(path: Path, input_name: str) -> Path:
    """The module exported as a user would, with a dynamic batch dimension (the exporter puts the weights in
    an external-data file beside the graph)."""
    torch.onnx.export(
        mlp(),
        (torch.zeros(2, FEATURES),),
        str(path),
        input_names=[input_name],
        output_names=["PROBABILITIES"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        dynamo=True,
    )
    return path


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1: a graph whose input is named X under a config declaring FEATURES; version 2: the graph
    with the config that declares its tensors. Version 2 is served."""
    files = tmp_path_factory.mktemp("user_onnx")
    root = tmp_path_factory.mktemp("user_onnx_repository")
    features = TensorConfig(name="FEATURES", datatype="FP32", shape=[-1, FEATURES], range=(-10.0, 10.0))
    for graph in (export(files / "renamed.onnx", "X"), export(files / "tiny.onnx", "FEATURES")):
        names = [graph.name, *(p.name for p in files.glob(f"{graph.name}.*"))]

        def copy(directory: Path, names: list[str] = names) -> None:
            for name in names:
                shutil.copyfile(files / name, directory / name)

        publish_version(root, config([features], names), copy)
    (root / NAME / "model.json").write_text('{"version_policy": "specific:2"}')
    return root


def request(features: np.ndarray, version: str = "") -> pb.ModelInferRequest:
    infer = pb.ModelInferRequest(model_name=NAME, model_version=version)
    infer.inputs.add(name="FEATURES", datatype="FP32", shape=features.shape)
    infer.raw_input_contents.append(features.astype("<f4").tobytes())
    return infer


def probabilities(response: pb.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(response.outputs[0].shape))


async def test_maas_serve_serves_a_user_onnx_file_as_published(repository: Path):
    features = np.random.default_rng(0).uniform(-3, 3, (16, FEATURES)).astype(np.float32)
    with torch.inference_mode():
        expected = mlp()(torch.from_numpy(features)).numpy()
    args = ["serve", REFERENCE, "--name", NAME, "--repository", str(repository), "--port", "0"]
    env = {"MAAS_TINY_MLP_METRICS_PORT": "0", "MAAS_TINY_MLP_DRAIN_GRACE_SECONDS": "3"}
    async with maas_process(*args, ready=NAME, env=env) as served:
        async with grpc.aio.insecure_channel(served.address) as channel:
            v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            response = await v2.ModelInfer(request(features))
            assert response.model_version == "2"
            np.testing.assert_allclose(probabilities(response), expected, atol=1e-6)
            together = await asyncio.gather(*(v2.ModelInfer(request(features[i : i + 1])) for i in range(16)))
            np.testing.assert_allclose(np.concatenate([probabilities(r) for r in together]), expected, atol=1e-6)
            metadata = await v2.ModelMetadata(pb.ModelMetadataRequest(name=NAME))
            assert metadata.platform == ONNXRUNTIME
            assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("FEATURES", "FP32", [-1, 6])]
            nan = features[:2].copy()
            nan[1, 2] = np.nan
            await assert_status(v2.ModelInfer(request(nan)), grpc.StatusCode.INVALID_ARGUMENT, "NaN or Inf")
            await assert_status(
                v2.ModelInfer(request(features[:2] * 10)), grpc.StatusCode.INVALID_ARGUMENT, "[-10, 10]"
            )
            await assert_status(
                v2.ModelInfer(request(features[:, :4])), grpc.StatusCode.INVALID_ARGUMENT, "must have shape [-1, 6]"
            )
            await assert_status(v2.ModelInfer(request(features[:0])), grpc.StatusCode.INVALID_ARGUMENT, "holds no rows")
            assert probabilities(await v2.ModelInfer(request(features[:1]))).shape == (1, 3)
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.process.wait(), 30) == 0


async def test_a_config_that_does_not_fit_the_graph_is_refused_at_load(repository: Path):
    spec = user_spec(REFERENCE, NAME)
    server = build_server(spec, spec.read_settings(port=0, metrics_port=0, model_repository=repository))
    async with started(server), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        load = pb.RepositoryModelLoadRequest(model_name=NAME)
        load.parameters["version"].string_param = "1"
        await assert_status(
            v2.RepositoryModelLoad(load), grpc.StatusCode.INVALID_ARGUMENT, "the ONNX graph's inputs are {'X'"
        )
        assert (await v2.ModelReady(pb.ModelReadyRequest(name=NAME, version="2"))).ready


async def test_serving_onnx_without_a_name_is_refused_with_one_clear_line(tmp_path: Path):
    _, stderr = await run_failing("serve", REFERENCE, "--repository", str(tmp_path), env={})
    assert b"names no model: give one with --name" in stderr
    assert b"Traceback" not in stderr
