"""Scale-out behind a DNS name: the gateway's channel resolves `dns://127.0.0.1:<port>/<name>:<port>`
with a DNS server on loopback, as it resolves a headless Service in a cluster. gRPC resolves the name
again only when a connection closes; the replicas age their connections (`max_connection_age_s`), so a
replica added to the name's answer gets calls within one connection age. Without the ageing it gets none."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc
import pytest

from maas.inference import grpc_service_pb2_grpc
from services.common.server import GrpcServer
from services.common.settings import EchoSettings
from services.common.versions import ModelRegistry
from services.gateway.hosting import build_server
from services.gateway.spec import GatewaySettings
from tests.conftest import started
from tests.traffic.dns import dns_server
from tests.traffic.load import closed_loop, codes
from tests.traffic.replica import replica_echo

NAME = "pool.maas.test"
FIRST, ADDED = "127.0.0.2", "127.0.0.3"
AGE_S = 2.0
JITTER = 1.1
"""gRPC ages a connection after max_connection_age +- 10%."""


def loopback_port() -> int:
    """A TCP port free on both replica addresses a moment ago (each replica binds its own address)."""
    import socket

    while True:
        with socket.socket() as first, socket.socket() as added:
            first.bind((FIRST, 0))
            port = first.getsockname()[1]
            try:
                added.bind((ADDED, port))
            except OSError:
                continue
            return port


def replica(host: str, port: int, version: str, age_s: float) -> GrpcServer:
    """A replica of the `pool` model on `host:port` answering with `version`."""
    settings = EchoSettings(
        host=host,
        port=port,
        metrics_port=0,
        drain_grace_seconds=1,
        max_connection_age_s=age_s,
        max_connection_age_grace_s=1.0,
    )
    return GrpcServer(f"replica-{version}", settings, ModelRegistry([replica_echo("pool", [version])]))


@pytest.mark.parametrize("age_s", [AGE_S, 0.0], ids=["aged", "never-aged"])
async def test_a_replica_added_to_the_dns_answer_gets_calls_within_one_connection_age(tmp_path: Path, age_s: float):
    port = loopback_port()
    async with (
        dns_server() as dns,
        started(replica(FIRST, port, "1", age_s)),
        started(replica(ADDED, port, "2", age_s)),
    ):
        dns.records[NAME] = [FIRST]
        routing = tmp_path / "routing.yaml"
        routing.write_text(
            f"targets: {{pool: {{address: 'dns://127.0.0.1:{dns.port}/{NAME}:{port}'}}}}\n"
            "models: {pool: {target: pool}}\n"
        )
        settings = GatewaySettings(
            port=0, metrics_port=0, routing_file=routing, dns_min_resolution_interval_s=AGE_S / 4
        )
        async with (
            started(build_server(settings)) as gateway,
            grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
        ):
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            load = asyncio.create_task(closed_loop(stub, 4, seconds=AGE_S * 3, delay_ms=2))
            await asyncio.sleep(AGE_S / 2)
            dns.records[NAME] = [FIRST, ADDED]
            added = time.monotonic()
            outcomes = await load
    assert codes(outcomes) == {"OK": len(outcomes)}, codes(outcomes)
    before = [o for o in outcomes if o.sent < added]
    assert before and {o.version for o in before} == {"1"}, "only the first replica was in the answer"
    reached = min((o.sent for o in outcomes if o.version == "2"), default=None)
    if not age_s:
        assert reached is None, "without ageing the connection never closes, so the name is never resolved again"
        assert dns.queries[NAME] == 1
        return
    assert reached is not None, "the added replica got no calls"
    logging.getLogger(__name__).info(
        "%d calls; the added replica got calls %.2f s after it was added", len(outcomes), reached - added
    )
    assert reached - added <= AGE_S * JITTER, "the added replica got no calls within one connection age"
    after = [o for o in outcomes if o.sent > reached]
    assert {o.version for o in after} == {"1", "2"}, "round_robin spreads calls over both replicas"
    assert dns.queries[NAME] >= 2
