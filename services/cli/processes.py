"""Run maas services as child processes and read their `READY <service> <address>` lines."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

STOP_TIMEOUT_SECONDS = 30.0


async def spawn(
    service: str,
    *args: str,
    env: dict[str, str] | None = None,
    pipe_stderr: bool = False,
    cpus: frozenset[int] | None = None,
) -> asyncio.subprocess.Process:
    """Start `maas run SERVICE ARGS...` with stdout piped (for its READY line), and stderr piped if
    `pipe_stderr` (else inherited); on the CPUs `cpus` only, if given (every thread it starts inherits them)."""
    with on_cpus(cpus):
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli.main",
            "run",
            service,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE if pipe_stderr else None,
            env={**os.environ, **(env or {})},
        )


@contextmanager
def on_cpus(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run the calling thread on `cpus` for the block (a child forked from it inherits them); no change if None."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


async def read_ready(process: asyncio.subprocess.Process, service: str, timeout: float = 120) -> str:
    """Wait for `READY <service> ...` on the process's stdout and return what follows it.

    Raises:
        RuntimeError: the process exited first.
        TimeoutError: no READY line within `timeout` seconds.
    """

    async def scan() -> str:
        assert process.stdout is not None
        async for raw in process.stdout:
            words = raw.decode(errors="replace").split()
            if words[:2] == ["READY", service]:
                return " ".join(words[2:])
        raise RuntimeError(f"{service} exited with status {await process.wait()} before it was ready")

    return await asyncio.wait_for(scan(), timeout)


@asynccontextmanager
async def running(
    service: str,
    *args: str,
    env: dict[str, str] | None = None,
    ready_as: str | None = None,
    cpus: frozenset[int] | None = None,
) -> AsyncIterator[str]:
    """Run a service for the duration of the block; yields its address; SIGTERM (then kill) on exit.

    `ready_as` names the READY line to wait for when the process hosts other services (`ray`); `cpus`,
    the only CPUs it may run on (None: any).
    """
    async with serving(await spawn(service, *args, env=env, cpus=cpus), ready_as or service) as address:
        yield address


@asynccontextmanager
async def serving(process: asyncio.subprocess.Process, ready: str) -> AsyncIterator[str]:
    """Keep a started process for the duration of the block; yields the address of its `READY <ready>`
    line; SIGTERM (then kill) on exit.

    Args:
        process: a child started with stdout piped.
        ready: the name its READY line gives.
    """
    try:
        yield await read_ready(process, ready)
    finally:
        await stop(process)


async def stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM a child still running, and kill it if it has not ended `STOP_TIMEOUT_SECONDS` later."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
