"""The ray hosting under load: autoscaling 1 -> 2 -> 1 replicas, and `reconfigure` switching the
served version, without a failed request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from ray import serve

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.catalog import SERVICES
from services.ray.apps import build_app
from services.ray.front import RayFront
from services.tokenizer.spec import TokenizerSettings
from tests.conftest import ray_test_settings, started

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def serve_running_replicas(app: str) -> int:
    """RUNNING replicas of the app's deployment, as Serve's status reports them."""
    deployment = serve.status().applications[app].deployments["tokenizer"]
    return deployment.replica_states.get("RUNNING", 0)


class Load:
    """Closed-loop callers that count answers and failures until stopped."""

    def __init__(self, call: Callable[[], Awaitable[pb.ModelInferResponse]], concurrency: int) -> None:
        self.ok = 0
        self.failures: list[BaseException] = []
        self.versions: list[str] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._caller(call)) for _ in range(concurrency)]

    async def _caller(self, call) -> None:
        while not self._stop.is_set():
            try:
                response = await call()
            except Exception as exc:
                self.failures.append(exc)
            else:
                self.ok += 1
                self.versions.append(response.model_version)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def wait_until(condition: Callable[[], bool], timeout: float) -> float:
    """Poll `condition` every 0.25 s; return the seconds it took.

    Raises:
        AssertionError: it did not hold within `timeout`.
    """
    started_at = time.monotonic()
    while not condition():
        assert time.monotonic() - started_at < timeout, f"not within {timeout:.0f}s"
        await asyncio.sleep(0.25)
    return time.monotonic() - started_at


def echo_request(delay_ms: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="X", datatype="INT64", shape=[1])
    request.raw_input_contents.append(np.zeros(1, "<i8").tobytes())
    request.parameters["delay_ms"].int64_param = delay_ms
    return request


def tokenizer_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tokenizer")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(len(b"hello").to_bytes(4, "little") + b"hello")
    return request


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding tokenizer versions 1 and 2."""
    from services.tokenizer.export import export_tokenizer

    repository = tmp_path_factory.mktemp("two_versions")
    export_tokenizer(repository)
    export_tokenizer(repository)
    return repository


async def test_replicas_scale_1_to_2_under_load_and_back_without_a_failed_request(ray_cluster, two_versions):
    ray = ray_test_settings(
        min_replicas=1,
        max_replicas=2,
        upscale_delay_s=0.5,
        downscale_delay_s=2.0,
        metrics_interval_s=0.5,
        look_back_period_s=1.0,
    )
    settings = TokenizerSettings(port=0, metrics_port=0, model_repository=two_versions)
    handle = serve.run(build_app(SERVICES["tokenizer"], settings, ray), name="autoscaling", route_prefix="/autoscaling")
    try:
        assert serve_running_replicas("autoscaling") == 1
        async with (
            started(RayFront(SERVICES["tokenizer"], settings, handle, ray)) as front,
            grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as channel,
        ):
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            slow = echo_request(100)
            heavy = Load(lambda: stub.ModelInfer(slow, timeout=30), concurrency=16)
            await wait_until(lambda: serve_running_replicas("autoscaling") == 2, timeout=90)
            await wait_until(lambda: front.running_replicas() == 2, timeout=30)
            await heavy.stop()
            quick = echo_request(0)
            light = Load(lambda: stub.ModelInfer(quick, timeout=30), concurrency=1)
            await wait_until(lambda: serve_running_replicas("autoscaling") == 1, timeout=90)
            await light.stop()
        assert heavy.ok > 16 and light.ok > 0
        assert not heavy.failures and not light.failures, (heavy.failures + light.failures)[:3]
    finally:
        serve.delete("autoscaling")


async def test_reconfigure_switches_the_served_version_under_load_without_a_failed_request(ray_cluster, two_versions):
    ray = ray_test_settings(min_replicas=1, max_replicas=1)
    settings = TokenizerSettings(port=0, metrics_port=0, model_repository=two_versions)
    handle = serve.run(
        build_app(SERVICES["tokenizer"], settings, ray, {"tokenizer": ["1"]}), name="versions", route_prefix="/v"
    )
    try:
        async with (
            started(RayFront(SERVICES["tokenizer"], settings, handle, ray)) as front,
            grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as channel,
        ):
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = tokenizer_request()
            load = Load(lambda: stub.ModelInfer(request, timeout=30), concurrency=4)
            await wait_until(lambda: load.ok > 20, timeout=30)
            app = build_app(SERVICES["tokenizer"], settings, ray, {"tokenizer": ["2"]})
            await asyncio.to_thread(serve.run, app, name="versions", route_prefix="/v")
            served = len(load.versions)
            await wait_until(lambda: len(load.versions) > served + 20, timeout=30)
            await load.stop()
            index = await stub.RepositoryIndex(pb.RepositoryIndexRequest())
        assert not load.failures, load.failures[:3]
        assert load.versions[0] == "1" and set(load.versions[served:]) == {"2"}
        states = {(m.name, m.version): m.state for m in index.models}
        assert states[("tokenizer", "2")] == "READY" and states[("tokenizer", "1")] == "UNAVAILABLE"
        assert serve.status().applications["versions"].deployments["tokenizer"].replica_states == {"RUNNING": 1}
    finally:
        serve.delete("versions")
