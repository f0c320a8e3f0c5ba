"""Start maas services as real processes and read their READY lines."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from services.cli.processes import serving, stop
from tests.conftest import PYTHON, REPO_ROOT


@dataclass
class ServiceProcess:
    """A running service process and the address from its READY line."""

    process: asyncio.subprocess.Process
    address: str


async def start_maas(
    *args: str, env: dict[str, str] | None = None, stderr: int | None = None
) -> asyncio.subprocess.Process:
    """Start `maas ARGS...` from the repository root with its stdout piped (and `stderr` as given)."""
    return await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "services.cli.main",
        *args,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=stderr,
    )


@asynccontextmanager
async def maas_process(*args: str, ready: str, env: dict[str, str] | None = None) -> AsyncIterator[ServiceProcess]:
    """Run `maas ARGS...` until the block ends, waiting for its `READY <ready>` line first.

    Stopped with SIGTERM (then killed), so that `maas up` stops its children too, even when the block
    failed.
    """
    process = await start_maas(*args, env=env)
    async with serving(process, ready) as address:
        yield ServiceProcess(process, address)


async def run_failing(*args: str, env: dict[str, str]) -> tuple[bytes, bytes]:
    """Run `maas ARGS...` to its end, expecting it to fail (exit status 1) within 60 s.

    Returns:
        Its stdout and stderr.
    """
    process = await start_maas(*args, env=env, stderr=subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    return stdout, stderr


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found.update(children)
        todo.extend(children)
    return found


def alive(pids: set[int]) -> dict[int, str]:
    """The processes among `pids` that still run (zombies count as gone), with their command lines."""
    running = {}
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z":
            running[pid] = command
    return running


@dataclass
class UpStack:
    """A running `maas up`: the addresses of its READY lines, and what it printed since."""

    process: asyncio.subprocess.Process
    ready: dict[str, str]
    stdout: asyncio.Queue[str]
    stderr: list[str]

    def child(self, service: str) -> int:
        """The pid of the live `maas run SERVICE` process below `maas up`."""
        for pid, command in alive(descendants(self.process.pid)).items():
            if command.split()[-2:] == ["run", service]:
                return pid
        raise AssertionError(f"no live {service} process below maas up")

    async def next_ready(self, service: str, timeout: float) -> str:
        """The address of the next `READY <service>` line maas up prints (a service started again)."""

        async def scan() -> str:
            while True:
                words = (await self.stdout.get()).split()
                if words[:2] == ["READY", service]:
                    return words[2]

        return await asyncio.wait_for(scan(), timeout)


@asynccontextmanager
async def maas_up(env: dict[str, str], timeout: float = 180) -> AsyncIterator[UpStack]:
    """Run `maas up` until the block ends, waiting for `READY all` first; SIGTERM (then kill) on exit.

    Its stderr is collected line by line (see `UpStack.stderr`); so is its stdout after `READY all`.
    """
    process = await start_maas("up", env=env, stderr=subprocess.PIPE)
    stack = UpStack(process, {}, asyncio.Queue(), [])

    async def collect_stderr() -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            stack.stderr.append(raw.decode(errors="replace"))

    async def collect_stdout() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            await stack.stdout.put(raw.decode(errors="replace"))

    readers = [asyncio.create_task(collect_stderr()), asyncio.create_task(collect_stdout())]
    try:

        async def started() -> None:
            while True:
                words = (await stack.stdout.get()).split()
                if words == ["READY", "all"]:
                    return
                if words[:1] == ["READY"]:
                    stack.ready[words[1]] = words[2]

        await asyncio.wait_for(started(), timeout)
        yield stack
    finally:
        await stop(process)
        await asyncio.gather(*readers, return_exceptions=True)


async def maas_output(*args: str) -> str:
    """Run `maas ARGS...` to its end, expecting success within 120 s; return its stdout."""
    process = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "services.cli.main", *args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()
