"""`maas up` as a user runs it: READY lines, clean stop on SIGTERM, failure when a service dies."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess

from tests.conftest import PYTHON, REPO_ROOT
from tests.integration.processes import maas_process, read_ready

FREE_PORTS = {"MAAS_ECHO_PORT": "0", "MAAS_ECHO_METRICS_PORT": "0"}


async def test_up_prints_ready_lines_and_stops_cleanly_on_sigterm():
    async with maas_process("up", ready="echo-server", env=FREE_PORTS) as up:
        assert up.address.startswith("127.0.0.1:")
        assert await read_ready(up.process, "all") == ""
        up.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(up.process.wait(), 30) == 0


async def test_up_fails_when_a_service_cannot_start():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, "MAAS_ECHO_PORT": str(taken.getsockname()[1]), "MAAS_ECHO_METRICS_PORT": "0"}
        process = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "services.cli.main",
            "up",
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert b"READY all" not in stdout
    assert b"echo-server exited before it was ready" in stderr
