"""Versions served from a real repository: swap under load, policies, refusals, batching stats."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.common.echo import echo_model
from services.common.repository import RepositoryError
from services.common.server import GrpcServer
from services.common.settings import EchoSettings
from services.common.versions import ModelRegistry
from tests.contract.linear_model import linear, make_version
from tests.contract.test_v2_echo import assert_status, assert_still_serving


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    make_version(tmp_path, 1, scale=1.0)
    return tmp_path


@pytest.fixture
async def server(repository: Path):
    settings = EchoSettings(port=0, metrics_port=0)
    server = GrpcServer("repo-test", settings, ModelRegistry([echo_model(), linear(repository)]))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def v2(server: GrpcServer):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


def linear_request(rows: int = 1, version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="linear", model_version=version)
    request.inputs.add(name="X", datatype="FP32", shape=[rows, 4])
    request.raw_input_contents.append(np.ones((rows, 4), dtype="<f4").tobytes())
    return request


def y_of(response) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(response.outputs[0].shape))


def load(version: str) -> pb.RepositoryModelLoadRequest:
    request = pb.RepositoryModelLoadRequest(model_name="linear")
    request.parameters["version"].string_param = version
    return request


def unload(version: str) -> pb.RepositoryModelUnloadRequest:
    request = pb.RepositoryModelUnloadRequest(model_name="linear")
    request.parameters["version"].string_param = version
    return request


async def test_swap_versions_under_steady_load_without_a_failed_request(v2, repository: Path, server: GrpcServer):
    seen: list[tuple[float, str, float]] = []
    failures: list[Exception] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = await v2.ModelInfer(linear_request())
            except grpc.aio.AioRpcError as exc:
                failures.append(exc)
                continue
            seen.append((started, response.model_version, float(y_of(response)[0, 0])))

    clients = [asyncio.ensure_future(client()) for _ in range(8)]
    await asyncio.sleep(0.3)
    make_version(repository, 2, scale=2.0)
    await v2.RepositoryModelLoad(load("2"))
    loaded_at = time.monotonic()
    await asyncio.sleep(0.3)
    await v2.RepositoryModelUnload(unload("1"))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*clients)

    assert not failures, failures[:3]
    assert len(seen) > 100
    assert {(v, y) for _, v, y in seen} == {("1", 5.0), ("2", 10.0)}, "each version computes with its own weights"
    assert seen[0][1] == "1" and seen[-1][1] == "2"
    assert all(v == "2" for started, v, _ in seen if started > loaded_at), "new requests go to the newest version"
    await assert_status(v2.ModelInfer(linear_request(version="1")), grpc.StatusCode.NOT_FOUND, "not loaded")
    await assert_status(v2.ModelInfer(linear_request(version="9")), grpc.StatusCode.NOT_FOUND, "no version '9'")
    ready = await v2.ModelReady(pb.ModelReadyRequest(name="linear", version="1"))
    assert not ready.ready
    index = await v2.RepositoryIndex(pb.RepositoryIndexRequest())
    assert [(m.version, m.state) for m in index.models if m.name == "linear"] == [("1", "UNAVAILABLE"), ("2", "READY")]
    assert set(server.models.get("linear").configs) == {"2"}, "an unloaded version leaves nothing behind"


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_concurrent_requests_are_batched_and_statistics_show_it(v2, server: GrpcServer):
    batches_before = metric(server.metrics_port, 'maas_batch_size_count{model="linear",version="1"}')
    rows_before = metric(server.metrics_port, 'maas_batch_size_sum{model="linear",version="1"}')
    queued_before = metric(server.metrics_port, 'maas_batch_queue_seconds_count{model="linear",version="1"}')
    before = (await v2.ModelStatistics(pb.ModelStatisticsRequest(name="linear", version="1"))).model_stats[0]
    assert (before.execution_count, before.inference_count) == (1, 0), "warm-up: one execution, no request"
    responses = await asyncio.gather(*(v2.ModelInfer(linear_request(rows=2)) for _ in range(40)))
    assert all(y_of(r).shape == (2, 2) for r in responses)
    stats = (await v2.ModelStatistics(pb.ModelStatisticsRequest(name="linear", version="1"))).model_stats[0]
    assert stats.inference_count == 80
    assert stats.execution_count - before.execution_count < 40, "requests shared executions"
    assert max(b.batch_size for b in stats.batch_stats) > 2
    assert stats.inference_stats.queue.count == 40 and stats.inference_stats.compute_infer.ns > 0
    per_request = stats.inference_stats
    counts = [per_request.compute_input.count, per_request.compute_infer.count, per_request.compute_output.count]
    assert counts == [40, 40, 40], "per request, as Triton counts them (perf_analyzer checks they agree)"
    port = server.metrics_port
    executions = stats.execution_count - before.execution_count
    assert metric(port, 'maas_batch_size_count{model="linear",version="1"}') - batches_before == executions
    assert metric(port, 'maas_batch_size_sum{model="linear",version="1"}') - rows_before == 80
    assert metric(port, 'maas_batch_queue_seconds_count{model="linear",version="1"}') - queued_before == 40


async def test_statistics_read_under_load_count_every_request_once_in_each_compute_phase(v2):
    requests = asyncio.gather(*(v2.ModelInfer(linear_request()) for _ in range(300)))
    snapshots = []
    while not requests.done():
        stats = await v2.ModelStatistics(pb.ModelStatisticsRequest(name="linear", version="1"))
        snapshots.append(stats.model_stats[0].inference_stats)
    await requests
    assert len(snapshots) > 3, "read while requests were in flight"
    for seen in snapshots:
        assert seen.compute_input.count == seen.compute_infer.count == seen.compute_output.count, seen


async def test_values_are_checked_before_batching(v2):
    request = linear_request()
    request.raw_input_contents[0] = np.array([[1, np.nan, 1, 1]], dtype="<f4").tobytes()
    await assert_status(v2.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "X must be finite")
    assert y_of(await v2.ModelInfer(linear_request()))[0, 0] == 5.0


REFUSALS = {
    "a pickle file beside the weights": (
        lambda d: (d / "extra.pkl").write_bytes(b"\x80\x04N."),
        ["refusing extra.pkl", "safetensors"],
    ),
    "weights of another architecture": (None, ["does not match the architecture", "weight is [2, 8]"]),
    "weights changed after export": (
        lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0"),
        ["does not match the SHA-256"],
    ),
    "a config whose tensors differ": (None, ["config declares inputs"]),
    "a config that is not valid": (None, ["invalid config", "metrics: Input should be an object"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_an_unusable_version_is_refused_and_the_rest_keeps_serving(v2, repository: Path, case):
    damage, fragments = REFUSALS[case]
    if case == "weights of another architecture":
        make_version(repository, 3, scale=3.0, in_features=8)
    elif case == "a config whose tensors differ":
        make_version(repository, 3, scale=3.0, inputs=[{"name": "X", "datatype": "INT64", "shape": [-1, 4]}])
    elif case == "a config that is not valid":
        make_version(repository, 3, scale=3.0, metrics="high")
    else:
        damage(make_version(repository, 3, scale=3.0))
    await assert_status(v2.RepositoryModelLoad(load("3")), grpc.StatusCode.INVALID_ARGUMENT, *fragments)
    assert y_of(await v2.ModelInfer(linear_request()))[0, 0] == 5.0
    await assert_still_serving(v2)
    index = await v2.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
    assert {(m.name, m.version) for m in index.models} == {("echo", "1"), ("linear", "1")}


async def test_version_policy_latest_two_loads_both_at_start(tmp_path: Path):
    make_version(tmp_path, 1, scale=1.0)
    make_version(tmp_path, 2, scale=2.0)
    make_version(tmp_path, 3, scale=3.0)
    (tmp_path / "linear" / "model.json").write_text('{"version_policy": "latest:2"}')
    model = linear(tmp_path)
    await model.load("")
    assert [(v.version, v.state) for v in model.index()] == [("1", "UNAVAILABLE"), ("2", "READY"), ("3", "READY")]
    assert model.resolve("") == "3"
    await model.unload("")


async def test_a_bad_policy_file_is_refused(tmp_path: Path):
    make_version(tmp_path, 1, scale=1.0)
    (tmp_path / "linear" / "model.json").write_text('{"version_policy": "newest"}')
    with pytest.raises(RepositoryError, match="expected latest, latest:N, all or specific"):
        linear(tmp_path)


async def test_a_broken_default_version_stops_startup_with_a_clear_error(tmp_path: Path):
    (make_version(tmp_path, 1, scale=1.0) / "weights.pt").write_bytes(b"not allowed")
    server = GrpcServer("repo-test", EchoSettings(port=0, metrics_port=0), ModelRegistry([linear(tmp_path)]))
    with pytest.raises(RepositoryError, match=r"refusing weights\.pt"):
        await server.start()
    await server.stop()
