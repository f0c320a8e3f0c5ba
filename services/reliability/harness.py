"""Building blocks of `make reliability`: service processes on loopback (started, signalled and stopped by
their pids, RSS read from /proc), and load generators that record every call's time and status."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from services.cli.processes import read_ready, spawn

STOP_SECONDS = 30.0
READY_SECONDS = 120.0
CALL_TIMEOUT_SECONDS = 10.0


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago and that this process has not handed out before
    (the kernel may offer a port again once its socket closes)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Service:
    """One `maas run SERVICE` process on loopback, on fixed ports so it can be started again in place."""

    name: str
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        """Its gRPC address."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """Its process id (the process must be running)."""
        assert self.process is not None
        return self.process.pid

    async def start(self) -> float:
        """Start the process and wait for its READY line.

        Returns:
            Seconds from start to READY.

        Raises:
            RuntimeError: it exited first.
        """
        prefix = f"MAAS_{self.name.upper()}_"
        env = {
            **self.env,
            f"{prefix}PORT": str(self.port),
            f"{prefix}METRICS_PORT": str(self.metrics_port),
            f"{prefix}LOG_LEVEL": "WARNING",
        }
        started = time.monotonic()
        self.process = await spawn(self.name, env=env)
        await read_ready(self.process, self.name, READY_SECONDS)
        return time.monotonic() - started

    def signal(self, signum: signal.Signals) -> None:
        """Send `signum` to the process, by its pid."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signum)

    async def stop(self) -> int | None:
        """SIGTERM the process and wait for it (SIGKILL after `STOP_SECONDS`).

        Returns:
            Its exit status (None if it never ran).
        """
        if self.process is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_SECONDS)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            await self.process.wait()
        return self.process.returncode

    def rss(self) -> int:
        """Its resident set size in bytes (0 when not running)."""
        return rss_bytes(self.pid) if self.process and self.process.returncode is None else 0


@contextlib.asynccontextmanager
async def running(services: Iterable[Service]):
    """Start `services` in order for the block; stop every one that runs at its end, by its pid."""
    started: list[Service] = []
    try:
        for service in services:
            started.append(service)
            await service.start()
        yield started
    finally:
        for service in reversed(started):
            await service.stop()


def routing_file(directory: Path, targets: dict[str, list[str]], models: dict[str, dict]) -> Path:
    """Write a gateway routing file: target -> endpoints, model -> route."""
    import yaml

    path = directory / "routing.yaml"
    path.write_text(
        yaml.safe_dump({"targets": {name: {"endpoints": eps} for name, eps in targets.items()}, "models": models})
    )
    return path


@dataclass(frozen=True)
class Call:
    """One call: when it was sent (monotonic seconds), how long it took, its status code's name."""

    sent: float
    seconds: float
    code: str
    kind: str = ""


Caller = Callable[[], Awaitable[object]]


async def _timed(call: Caller, kind: str) -> Call:
    sent = time.monotonic()
    try:
        await call()
        code = "OK"
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
    return Call(sent, time.monotonic() - sent, code, kind)


async def closed_loop(call: Caller, callers: int, seconds: float, kind: str = "") -> list[Call]:
    """`callers` callers, each sending its next call when the last returns, for `seconds`."""
    calls: list[Call] = []
    stop = time.monotonic() + seconds

    async def caller() -> None:
        while time.monotonic() < stop:
            calls.append(await _timed(call, kind))

    await asyncio.gather(*(caller() for _ in range(callers)))
    return calls


async def open_loop(mix: dict[str, tuple[float, Caller]], seconds: float) -> list[Call]:
    """Send calls at fixed rates, whatever the answers: kind -> (calls per second, caller), for `seconds`.

    Bounded in count (rate x seconds per kind) and in time (each call's own deadline).
    """
    start = time.monotonic()
    schedule = sorted(
        (start + i / rate, kind, call) for kind, (rate, call) in mix.items() for i in range(int(rate * seconds))
    )
    tasks = []
    for when, kind, call in schedule:
        delay = when - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_timed(call, kind)))
    return list(await asyncio.gather(*tasks))


def percentile_ms(seconds: Iterable[float], q: float) -> float:
    """The q-th percentile of durations, in milliseconds (0 for none)."""
    values = np.asarray(list(seconds), dtype=np.float64)
    return float(np.percentile(values, q) * 1000) if values.size else 0.0


class RssSampler:
    """Samples the RSS of processes every `interval` seconds while running."""

    def __init__(self, services: dict[str, Service], interval: float) -> None:
        self._services = services
        self._interval = interval
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        start = time.monotonic()
        while True:
            self.samples.append((time.monotonic() - start, {n: s.rss() for n, s in self._services.items()}))
            await asyncio.sleep(self._interval)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()

    def at(self, name: str, elapsed: float, window: float) -> float:
        """The median RSS of `name` over samples within `window` seconds after `elapsed`."""
        values = [s[name] for t, s in self.samples if elapsed <= t <= elapsed + window and s[name]]
        return float(np.median(values)) if values else 0.0

    def last(self, name: str, window: float) -> float:
        """The median RSS of `name` over the last `window` seconds sampled."""
        end = self.samples[-1][0] if self.samples else 0.0
        return self.at(name, end - window, window)


def load_average() -> str:
    """The machine's 1/5/15-minute load averages."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())
