"""Start maas services as real processes and read their READY lines."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from services.cli.processes import serving
from tests.conftest import PYTHON, REPO_ROOT


@dataclass
class ServiceProcess:
    """A running service process and the address from its READY line."""

    process: asyncio.subprocess.Process
    address: str


@asynccontextmanager
async def maas_process(*args: str, ready: str, env: dict[str, str] | None = None) -> AsyncIterator[ServiceProcess]:
    """Run `maas ARGS...` until the block ends, waiting for its `READY <ready>` line first.

    Stopped with SIGTERM (then killed), so that `maas up` stops its children too, even when the block
    failed.
    """
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "services.cli.main",
        *args,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
    )
    async with serving(process, ready) as address:
        yield ServiceProcess(process, address)


async def run_failing(*args: str, env: dict[str, str]) -> tuple[bytes, bytes]:
    """Run `maas ARGS...` to its end, expecting it to fail (exit status 1) within 60 s.

    Returns:
        Its stdout and stderr.
    """
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "services.cli.main",
        *args,
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    return stdout, stderr


async def maas_output(*args: str) -> str:
    """Run `maas ARGS...` to its end, expecting success within 120 s; return its stdout."""
    process = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "services.cli.main", *args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()
