"""Two replica processes behind the gateway under load; one is stopped by its pid mid-load and
started again on its port. SIGTERM (what kubelet and `kill PID` send): the replica drains, the
gateway stops sending to it and retries the calls it refused, so no call fails. SIGKILL: only the
calls on their way to it or in flight on it when it died fail — they were sent and may have run, so
they are not retried — at most one per caller, none sent after it was gone; unless the route allows
retrying calls lost in flight (`retries.in_flight`, for models without side effects), when none fail.
Either way it gets calls again soon after it is back."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest

from maas.inference import grpc_service_pb2_grpc
from services.cli.processes import read_ready
from services.common.clients import UNREACHABLE_PREFIX
from services.gateway.hosting import build_server
from services.gateway.spec import GatewaySettings
from tests.conftest import started
from tests.traffic.load import closed_loop, codes

CONCURRENCY = 8
KILL_AT = 1.0
RESTART_AFTER = 1.0
LOAD_SECONDS = 7.0


async def start_replica(version: str, port: int = 0) -> tuple[asyncio.subprocess.Process, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.traffic.replica",
        "--name",
        "pool",
        "--versions",
        version,
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
    )
    address = await read_ready(process, "replica", timeout=60)
    return process, int(address.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    ("signum", "in_flight"),
    [(signal.SIGTERM, False), (signal.SIGKILL, False), (signal.SIGKILL, True)],
    ids=["sigterm", "sigkill", "sigkill-retry-in-flight"],
)
async def test_a_replica_stopped_mid_load(tmp_path: Path, signum: signal.Signals, in_flight: bool):
    one, one_port = await start_replica("1")
    two, two_port = await start_replica("2")
    processes = [one, two]
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        f"targets: {{pool: {{endpoints: ['127.0.0.1:{one_port}', '127.0.0.1:{two_port}']}}}}\n"
        f"models: {{pool: {{target: pool, retries: {{in_flight: {str(in_flight).lower()}}}}}}}\n"
    )
    settings = GatewaySettings(port=0, metrics_port=0, routing_file=routing)
    try:
        async with (
            started(build_server(settings)) as gateway,
            grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
        ):
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            load = asyncio.create_task(closed_loop(stub, CONCURRENCY, seconds=LOAD_SECONDS, delay_ms=5))
            await asyncio.sleep(KILL_AT)
            killed = time.monotonic()
            one.send_signal(signum)
            await one.wait()
            dead = time.monotonic()
            await asyncio.sleep(RESTART_AFTER)
            one, _ = await start_replica("1", one_port)
            processes.append(one)
            back = time.monotonic()
            outcomes = await load
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await process.wait()
    failed = [o for o in outcomes if o.code != "OK"]
    returned = min((o.sent for o in outcomes if o.version == "1" and o.sent > back), default=None)
    assert returned is not None and returned - back < 5.0, "the replica got no calls within 5 s of coming back"
    before = sum(1 for o in outcomes if o.version == "1" and o.sent < killed)
    logging.getLogger(__name__).info(
        "%s: %d calls, %d failed %s; replica had %d calls before; calls again %.2f s after it was back",
        signum.name,
        len(outcomes),
        len(failed),
        dict(codes(failed)),
        before,
        returned - back,
    )
    if signum == signal.SIGTERM or in_flight:
        assert failed == []
    else:
        assert len(failed) <= CONCURRENCY, failed
        assert all(o.code == "UNAVAILABLE" and killed - 1.0 < o.sent < dead for o in failed), failed
        assert not any(o.details.startswith(UNREACHABLE_PREFIX) for o in failed), failed
