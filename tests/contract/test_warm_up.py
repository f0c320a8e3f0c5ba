"""No slow first call: every model version has run once before its service reports SERVING, and the
gateway's channels to every service are connected before it does."""

from __future__ import annotations

import grpc
import pytest

from maas.common.v1 import common_pb2, common_pb2_grpc
from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.gateway.hosting import build_server
from tests.conftest import started
from tests.contract.test_gateway import every_service, gateway_settings

MODELS = {
    "tokenizer": {"tokenizer"},
    "vision": {"fashion_cnn"},
    "text": {"review_lstm"},
    "transformer": {"minilm_embed", "minilm_sentiment"},
}


async def test_every_version_ran_once_before_the_service_was_ready(
    tokenizer_server, vision_server, text_server, transformer_server, hosting: str
):
    servers = {"tokenizer": tokenizer_server, "vision": vision_server, "text": text_server}
    servers["transformer"] = transformer_server
    for service, server in servers.items():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            index = await v2.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
            ready = {(m.name, m.version) for m in index.models if m.name != "echo"}
            assert {name for name, _ in ready} == MODELS[service]
            stats = await v2.ModelStatistics(pb.ModelStatisticsRequest())
            status = await common_pb2_grpc.StatusServiceStub(channel).Status(common_pb2.StatusRequest())
        (serving,) = {v.server for v in status.versions if (v.model, v.version) in ready}
        (host,) = [s for s in status.servers if s.id == serving]
        assert host.service == service and host.hosting == hosting and host.ready
        assert {(v.model, v.version) for v in status.versions if v.state == "READY" and v.model != "echo"} == ready
        if service != "tokenizer":
            assert all(v.device == "cpu" for v in status.versions if v.model != "echo" and v.state == "READY")
        checked = [entry for entry in stats.model_stats if (entry.name, entry.version) in ready]
        assert len(checked) == len(ready)
        for entry in checked:
            if hosting == "grpc":
                assert entry.execution_count == 1, (entry.name, entry.version)
                assert (entry.inference_count, entry.inference_stats.success.count) == (0, 0), "warm-up is no request"
                assert entry.inference_stats.queue.count == 0 and entry.inference_stats.compute_infer.count == 0
                assert [(b.batch_size, b.compute_infer.count) for b in entry.batch_stats] == [(1, 1)]
            else:
                assert entry.execution_count >= 1, (entry.name, entry.version)


@pytest.mark.parametrize("hosting", ["grpc"], indirect=True)
async def test_the_gateways_channels_are_connected_when_it_reports_serving(
    tokenizer_server, vision_server, text_server, transformer_server, hosting
):
    targets = every_service(tokenizer_server, vision_server, text_server, transformer_server)
    async with started(build_server(gateway_settings(connect_timeout_seconds=30), targets)) as gateway:
        states = {name: target.channel.get_state() for name, target in gateway.router.targets.items()}
        assert states == dict.fromkeys(("tokenizer", "vision", "text", "transformer"), grpc.ChannelConnectivity.READY)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            status = await common_pb2_grpc.StatusServiceStub(channel).Status(common_pb2.StatusRequest())
    routed = {(v.model, v.version) for v in status.versions if v.state == "READY"}
    assert {("fashion_cnn", "1"), ("minilm_embed", "1"), ("review_lstm", "1"), ("tokenizer", "1")} <= routed
    assert all(v.execution_count >= 1 for v in status.versions if v.model != "echo" and v.device)
