"""Gateway traffic control over real replica servers on real sockets: canary splits, version pins,
route timeouts, live reload of a kubelet-style ConfigMap file, what counts as "did not run", and
API keys with rate limits."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.common.clients import Downstream
from services.common.errors import DownstreamError, NotRun
from services.common.interceptor import status_code
from services.common.server import GrpcServer
from services.gateway.hosting import GatewayServer, build_server
from services.gateway.spec import GatewaySettings
from tests.conftest import free_port, started
from tests.contract.test_v2_echo import assert_status
from tests.traffic.load import ConfigMapDir, closed_loop, codes, infer_request
from tests.traffic.replica import replica

KEY = "team-key-0123456789abcdef"
OTHER_KEY = "ci-key-0123456789abcdef0"


def split_routing(address: str, weights: tuple[int, int]) -> str:
    return (
        f"targets: {{pool: {{endpoints: ['{address}']}}}}\n"
        "models:\n"
        "  pool:\n"
        "    split:\n"
        f"      - {{target: pool, version: 1, weight: {weights[0]}}}\n"
        f"      - {{target: pool, version: 2, weight: {weights[1]}}}\n"
    )


def pinned_routing(address: str, version: int, timeout: float = 10) -> str:
    return (
        f"targets: {{pool: {{endpoints: ['{address}']}}}}\n"
        f"models: {{pool: {{target: pool, version: {version}, timeout_seconds: {timeout}}}}}\n"
    )


@pytest.fixture
async def pool() -> AsyncIterator[GrpcServer]:
    """One replica serving versions 1 and 2 of `pool`."""
    async with started(replica("pool", ["1", "2"])) as server:
        yield server


@pytest.fixture
def configmap(tmp_path: Path) -> ConfigMapDir:
    return ConfigMapDir(tmp_path)


async def gateway_on(configmap: ConfigMapDir, **settings) -> GatewayServer:
    return build_server(
        GatewaySettings(port=0, metrics_port=0, routing_file=configmap.path, drain_grace_seconds=2, **settings)
    )


def v2_stub(channel: grpc.aio.Channel) -> grpc_service_pb2_grpc.GRPCInferenceServiceStub:
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


async def test_a_90_10_canary_split_over_2000_calls(pool, configmap):
    configmap.write(split_routing(f"127.0.0.1:{pool.port}", (90, 10)))
    async with (
        started(await gateway_on(configmap)) as gateway,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
    ):
        outcomes = await closed_loop(v2_stub(channel), concurrency=16, calls=2000)
        versions = Counter(o.version for o in outcomes)
        assert codes(outcomes) == {"OK": 2000}
        assert abs(versions["2"] / 2000 - 0.10) <= 0.03, versions
        named = [await v2_stub(channel).ModelInfer(infer_request(version="2")) for _ in range(10)]
        assert {r.model_version for r in named} == {"2"}
        metadata = await v2_stub(channel).ModelMetadata(pb.ModelMetadataRequest(name="pool"))
        assert metadata.name == "pool"
    logging.getLogger(__name__).info("canary 90/10 over 2000 calls: %s", dict(versions))


async def test_new_weights_take_effect_within_2s_with_no_failed_call(pool, configmap):
    configmap.write(split_routing(f"127.0.0.1:{pool.port}", (90, 10)))
    async with (
        started(await gateway_on(configmap)) as gateway,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
    ):
        load = asyncio.create_task(closed_loop(v2_stub(channel), concurrency=8, seconds=5.5, delay_ms=2))
        await asyncio.sleep(1.5)
        changed = time.monotonic()
        configmap.write(split_routing(f"127.0.0.1:{pool.port}", (0, 100)))
        outcomes = await load
        reloads = gateway.watcher.reloads
    assert codes(outcomes) == {"OK": len(outcomes)} and reloads == 1
    last_old = max(o.sent for o in outcomes if o.version == "1")
    assert last_old - changed < 2.0, f"version 1 still got calls {last_old - changed:.2f} s after the change"
    assert {o.version for o in outcomes if o.sent > changed + 2.0} == {"2"}
    logging.getLogger(__name__).info(
        "weights 90/10 -> 0/100: last call to version 1 sent %.2f s after the change; %d calls, none failed",
        last_old - changed,
        len(outcomes),
    )


async def test_a_malformed_routing_file_leaves_the_previous_routing_serving(pool, configmap, caplog):
    address = f"127.0.0.1:{pool.port}"
    configmap.write(pinned_routing(address, 1))
    async with (
        started(await gateway_on(configmap, reload_interval_seconds=0.1)) as gateway,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
    ):
        stub = v2_stub(channel)
        assert (await stub.ModelInfer(infer_request())).model_version == "1"
        for broken in ("targets: [\n", "targets: {}\nmodels: {pool: {target: nowhere}}\n", "models: 3\n"):
            rejected = gateway.watcher.rejections
            configmap.write(broken)
            await wait_for(lambda r=rejected: gateway.watcher.rejections == r + 1)
            answers = await asyncio.gather(*(stub.ModelInfer(infer_request()) for _ in range(20)))
            assert {a.model_version for a in answers} == {"1"}
        messages = [
            r.getMessage() for r in caplog.records if r.name == "services.gateway.watch" and r.levelno == logging.ERROR
        ]
        assert len(messages) == 3 and all("still serving the previous routing" in m for m in messages)
        assert "not YAML" in messages[0] and "pool -> nowhere" in messages[1]
        configmap.write(pinned_routing(address, 2))
        await wait_for(lambda: gateway.watcher.reloads == 1)
        assert (await stub.ModelInfer(infer_request())).model_version == "2"


async def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_pinned_version_and_a_route_timeout(pool, configmap):
    configmap.write(pinned_routing(f"127.0.0.1:{pool.port}", 1, timeout=0.3))
    async with (
        started(await gateway_on(configmap)) as gateway,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
    ):
        stub = v2_stub(channel)
        assert (await stub.ModelInfer(infer_request())).model_version == "1"
        assert (await stub.ModelInfer(infer_request(version="2"))).model_version == "2"
        started_at = time.monotonic()
        await assert_status(
            stub.ModelInfer(infer_request(delay_ms=3000), timeout=10), grpc.StatusCode.DEADLINE_EXCEEDED
        )
        assert time.monotonic() - started_at < 2.0
        ready = await stub.ModelReady(pb.ModelReadyRequest(name="pool"))
        assert ready.ready


async def test_failed_calls_say_whether_they_surely_did_not_run():
    unreachable = Downstream("down", f"dns:///127.0.0.1:{free_port()}", 1 << 20, 5.0)
    with pytest.raises(DownstreamError) as info:
        await unreachable.call(v2_stub(unreachable.channel).ModelInfer, infer_request(), "/m")
    assert status_code(info.value) is grpc.StatusCode.UNAVAILABLE and info.value.not_run is NotRun.UNREACHABLE
    await unreachable.close()
    async with started(replica("pool", ["1"])) as server:
        downstream = Downstream("pool", f"dns:///127.0.0.1:{server.port}", 1 << 20, 5.0)
        stub = v2_stub(downstream.channel)
        with pytest.raises(DownstreamError) as info:
            await downstream.call(stub.ModelInfer, infer_request(version="9"), "/m")
        assert status_code(info.value) is grpc.StatusCode.NOT_FOUND and info.value.not_run is None
        server.lifecycle.start_draining()
        with pytest.raises(DownstreamError) as info:
            await downstream.call(stub.ModelInfer, infer_request(), "/m")
        assert status_code(info.value) is grpc.StatusCode.UNAVAILABLE and info.value.not_run is NotRun.REFUSED
        assert str(info.value) == "server is shutting down; retry on another replica"
        await downstream.close()


async def test_a_drained_replica_is_retried_on_the_other_with_no_failed_call(configmap):
    async with started(replica("pool", ["1"])) as one, started(replica("pool", ["2"])) as two:
        configmap.write(
            f"targets: {{pool: {{endpoints: ['127.0.0.1:{one.port}', '127.0.0.1:{two.port}']}}}}\n"
            "models: {pool: {target: pool}}\n"
        )
        async with (
            started(await gateway_on(configmap)) as gateway,
            grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
        ):
            load = asyncio.create_task(closed_loop(v2_stub(channel), concurrency=8, seconds=2.0, delay_ms=5))
            await asyncio.sleep(0.5)
            await one.stop()
            outcomes = await load
    assert codes(outcomes) == {"OK": len(outcomes)}
    assert {o.version for o in outcomes if o.sent > outcomes[0].sent + 1.0} == {"2"}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(
        f"keys:\n  - {{name: team, key: {KEY}, rate_per_second: 1, burst: 3}}\n  - {{name: ci, key: {OTHER_KEY}}}\n"
    )
    return path


async def test_api_keys_and_rate_limits(pool, configmap, keys_file):
    configmap.write(pinned_routing(f"127.0.0.1:{pool.port}", 1))
    async with (
        started(await gateway_on(configmap, api_keys_file=keys_file)) as gateway,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
    ):
        stub = v2_stub(channel)
        await assert_status(
            stub.ModelInfer(infer_request()),
            grpc.StatusCode.UNAUTHENTICATED,
            "missing API key: send metadata 'authorization: Bearer <key>'",
        )
        wrong = (("authorization", "Bearer not-the-key"),)
        await assert_status(
            stub.ModelInfer(infer_request(), metadata=wrong), grpc.StatusCode.UNAUTHENTICATED, "invalid API key"
        )
        await assert_status(
            stub.ServerLive(pb.ServerLiveRequest(), metadata=(("authorization", KEY),)),
            grpc.StatusCode.UNAUTHENTICATED,
            "malformed authorization metadata",
        )
        team = (("authorization", f"Bearer {KEY}"),)
        answers = [await stub.ModelInfer(infer_request(), metadata=team) for _ in range(3)]
        assert [a.model_version for a in answers] == ["1", "1", "1"]
        await assert_status(
            stub.ModelInfer(infer_request(), metadata=team),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "API key 'team' is over its rate limit of 1 calls/s (burst 3); retry in 0.",
        )
        ci = (("authorization", f"Bearer {OTHER_KEY}"),)
        assert len(await asyncio.gather(*(stub.ModelInfer(infer_request(), metadata=ci) for _ in range(20)))) == 20
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        listed = [
            r
            async for r in reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        ]
        names = {s.name for s in listed[0].list_services_response.service}
        assert "inference.GRPCInferenceService" in names
