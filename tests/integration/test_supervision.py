"""`maas up` under faults, with callers all the while: losing a service loses no call and brings nothing
else down, a dead service is started again, a service that keeps crashing stops everything with one
line, and SIGTERM drains the gateway before the services."""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import signal
import time
from pathlib import Path

import grpc

from maas.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from maas.tokenizer.v1 import tokenizer_pb2
from services.common.clients import channel_options
from tests.integration.processes import maas_up
from tests.integration.test_up import free_ports

CALLERS = 16
ALLOWED = {"OK", "UNAVAILABLE"}


class Callers:
    """Callers of the gateway's ClassifyText (tokenizer, then transformer), each in a closed loop that
    waits 20 ms after a failure; every outcome is counted by status code. Their channel watches the
    gateway's health, as maas's own channels do, so it stops sending once the gateway drains."""

    def __init__(self, address: str) -> None:
        self.codes: collections.Counter[str] = collections.Counter()
        self._channel = grpc.aio.insecure_channel(address, options=channel_options(1 << 20))
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._running = True
        self._tasks = [asyncio.create_task(self._caller()) for _ in range(CALLERS)]

    async def _caller(self) -> None:
        request = gateway_pb2.ClassifyTextRequest(texts=["Great taffy at a great price."])
        while self._running:
            try:
                await self._stub.ClassifyText(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                self.codes[exc.code().name] += 1
                await asyncio.sleep(0.02)
            else:
                self.codes["OK"] += 1

    async def stop(self) -> collections.Counter[str]:
        """Let every call in flight finish, and return the counts."""
        self._running = False
        await asyncio.gather(*self._tasks)
        await self._channel.close()
        return self.codes


async def tokenize(address: str, timeout: float = 10) -> grpc.StatusCode:
    """One Tokenize through the gateway: its status code."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        try:
            await stub.Tokenize(tokenizer_pb2.TokenizeRequest(texts=["back again"]), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def until_ok(address: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while await tokenize(address) != grpc.StatusCode.OK:
        assert time.monotonic() < deadline, "the gateway did not reach the restarted tokenizer"
        await asyncio.sleep(0.2)


async def test_losing_services_loses_no_call_and_sigterm_drains_the_gateway_first(model_repository: Path):
    async with maas_up(free_ports(model_repository)) as up:
        gateway = up.ready["gateway"]
        callers = Callers(gateway)
        await asyncio.sleep(2)
        os.kill(up.child("tokenizer"), signal.SIGTERM)
        await up.next_ready("tokenizer", 60)
        await until_ok(gateway, 10)
        os.kill(up.child("tokenizer"), signal.SIGKILL)
        started = time.monotonic()
        assert await tokenize(gateway) == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 3, "the gateway answers for a dead service at once"
        await up.next_ready("tokenizer", 60)
        await until_ok(gateway, 10)
        assert up.process.returncode is None, "losing a service must not stop the others"
        await asyncio.sleep(1)
        up.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(up.process.wait(), 60) == 0
        codes = await callers.stop()
    assert codes["OK"] > 0
    assert set(codes) <= ALLOWED, codes
    stopped = [line.split()[-2] for line in up.stderr if line.rstrip().endswith(" stopped")][-5:]
    assert stopped[0] == "gateway" and stopped[-1] == "tokenizer", stopped


async def test_a_service_that_keeps_crashing_stops_everything_with_one_line(model_repository: Path, tmp_path: Path):
    repository = tmp_path / "repository"
    shutil.copytree(model_repository, repository, copy_function=os.link)
    async with maas_up(free_ports(repository)) as up:
        shutil.rmtree(repository / "tokenizer")
        os.kill(up.child("tokenizer"), signal.SIGKILL)
        assert await asyncio.wait_for(up.process.wait(), 120) == 1
    reasons = [line for line in up.stderr if "maas.up" in line and "stopping every service" in line]
    assert len(reasons) == 1, up.stderr
    assert "tokenizer crashed 6 times within 5 minutes (last exit status " in reasons[0]
    assert "(last exit status 0)" not in reasons[0]
    restarts = [line for line in up.stderr if "tokenizer crashed (exit status" in line]
    assert [line.split("again in ")[-1].strip() for line in restarts] == ["1 s", "2 s", "4 s", "8 s", "16 s"]
