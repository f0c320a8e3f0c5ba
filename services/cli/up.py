"""`maas up`: every service as its own process on this machine, supervised.

Prints `READY <service> <host>:<port>` as each becomes healthy, then `READY all`. Each child's log lines
(its stderr) are copied to ours prefixed with its service name (`vision | ...`). A service that fails
before `READY all` stops everything. Afterwards a service that dies is started again (its READY line
is printed again): one that exited with status 0 on its own (stopped, e.g. by a SIGTERM of its own)
after `RESTART_BACKOFF_SECONDS`; one that crashed after a backoff of 1 s doubling with each crash
within `CRASH_WINDOW_SECONDS`, at most 30 s. More than `MAX_CRASHES` crashes of one service within that
window stop everything, and `maas up` exits 1 with one line saying which. Meanwhile the gateway
answers calls to the missing service with UNAVAILABLE. On Ctrl-C or SIGTERM the services drain in the
reverse order of their start, the gateway first, so that no call is routed to a service that is
already stopping; one that outlives its grace is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Callable

from services.cli.processes import spawn

log = logging.getLogger("maas.up")

KILL_MARGIN_SECONDS = 5.0
RESTART_BACKOFF_SECONDS = 1.0
MAX_RESTART_BACKOFF_SECONDS = 30.0
CRASH_WINDOW_SECONDS = 300.0
MAX_CRASHES = 5
READY_TIMEOUT_SECONDS = 120.0
GATEWAY = "gateway"

Environment = Callable[[str, dict[str, str]], dict[str, str]]


class TooManyCrashes(Exception):
    """A service crashed more than `MAX_CRASHES` times within `CRASH_WINDOW_SECONDS`."""


class _Child:
    """One service process of `maas up`, started again when it dies."""

    def __init__(self, service: str, reports: list[str]) -> None:
        self.service = service
        self.reports = reports
        self.process: asyncio.subprocess.Process | None = None
        self.ready: asyncio.Future[dict[str, str]] | None = None
        self.relays: list[asyncio.Task] = []
        self._crashes: deque[float] = deque()

    async def spawn(self, env: dict[str, str]) -> None:
        """Start the process and copy its output; `ready` resolves to its addresses once every service it
        hosts has printed its READY line, or fails if it exits first."""
        self.ready = asyncio.get_running_loop().create_future()
        starting = asyncio.ensure_future(spawn(self.service, env=env, pipe_stderr=True))
        try:
            self.process = await asyncio.shield(starting)
        except asyncio.CancelledError:
            self.process = await starting
            raise
        self.relays.append(asyncio.create_task(self._relay(self.process, self.ready)))
        self.relays.append(asyncio.create_task(self._relay_logs(self.process)))

    async def _relay(self, process: asyncio.subprocess.Process, ready: asyncio.Future[dict[str, str]]) -> None:
        assert process.stdout is not None
        addresses: dict[str, str] = {}
        async for raw in process.stdout:
            line = raw.decode(errors="replace")
            sys.stdout.write(line)
            sys.stdout.flush()
            words = line.split()
            if len(words) == 3 and words[0] == "READY" and words[1] in self.reports:
                addresses[words[1]] = words[2]
                if len(addresses) == len(self.reports) and not ready.done():
                    ready.set_result(dict(addresses))
        if not ready.done():
            ready.set_exception(RuntimeError(f"{self.service} exited before it was ready"))

    async def _relay_logs(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        prefix = f"{self.service} | ".encode()
        async for raw in process.stderr:
            sys.stderr.buffer.write(prefix + raw)
            sys.stderr.flush()

    def backoff(self, status: int) -> float:
        """The wait before starting the service again after it exited with `status`.

        Raises:
            TooManyCrashes: this crash is one more than `MAX_CRASHES` within `CRASH_WINDOW_SECONDS`.
        """
        if status == 0:
            return RESTART_BACKOFF_SECONDS
        now = time.monotonic()
        self._crashes.append(now)
        while now - self._crashes[0] > CRASH_WINDOW_SECONDS:
            self._crashes.popleft()
        if len(self._crashes) > MAX_CRASHES:
            raise TooManyCrashes(
                f"{self.service} crashed {len(self._crashes)} times within {CRASH_WINDOW_SECONDS / 60:.0f} minutes "
                f"(last exit status {status}); stopping every service"
            )
        return min(MAX_RESTART_BACKOFF_SECONDS, RESTART_BACKOFF_SECONDS * 2 ** (len(self._crashes) - 1))

    async def keep(self, environment: Environment, ready: dict[str, str]) -> None:
        """Start the service again each time it dies, until cancelled; `ready` (service -> address) is
        kept up to date, and the gateway's routing file rewritten when an address changes.

        Raises:
            TooManyCrashes: the service crashed too often.
        """
        assert self.process is not None and self.ready is not None
        while True:
            status = await self.process.wait()
            delay = self.backoff(status)
            how = "exited with status 0" if status == 0 else f"crashed (exit status {status})"
            log.warning("%s %s; starting it again in %.0f s", self.service, how, delay)
            await asyncio.sleep(delay)
            await self.spawn(environment(self.service, dict(ready)))
            try:
                addresses = await asyncio.wait_for(self.ready, READY_TIMEOUT_SECONDS)
            except (RuntimeError, TimeoutError) as exc:
                log.error("%s did not come back: %s", self.service, exc or "no READY line in time")
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                continue
            changed = any(ready.get(name) != address for name, address in addresses.items())
            ready.update(addresses)
            if changed and self.service != GATEWAY:
                environment(GATEWAY, dict(ready))


async def _stop(children: list[_Child], grace: float) -> bool:
    """SIGTERM every child still running and wait for it (killing one that outlives its grace).

    Returns:
        True if every child that was stopped here exited cleanly (status 0).
    """
    stopping = [child for child in children if child.process is not None and child.process.returncode is None]
    for child in stopping:
        child.process.send_signal(signal.SIGTERM)
    clean = True
    for child in stopping:
        try:
            await asyncio.wait_for(child.process.wait(), grace + KILL_MARGIN_SECONDS)
        except TimeoutError:
            log.error("%s did not stop within %.0fs; killing it", child.service, grace + KILL_MARGIN_SECONDS)
            child.process.kill()
            await child.process.wait()
        if child.process.returncode != 0:
            log.error("%s exited with status %s while stopping", child.service, child.process.returncode)
            clean = False
    return clean


async def _supervise(children: list[_Child], stop: asyncio.Event, environment: Environment, ready: dict) -> int:
    """Keep every child running until `stop` is set.

    Returns:
        0 once `stop` is set, 1 if a child crashed too often.
    """
    keepers = [asyncio.create_task(child.keep(environment, ready)) for child in children]
    stopping = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({stopping, *keepers}, return_when=asyncio.FIRST_COMPLETED)
        if stopping in done:
            return 0
        log.error("%s", next(task for task in keepers if task in done).exception())
        return 1
    finally:
        for task in (stopping, *keepers):
            task.cancel()
        await asyncio.gather(stopping, *keepers, return_exceptions=True)


async def up(
    groups: list[list[str]],
    grace: float,
    environment: Environment,
    hosts: dict[str, list[str]] | None = None,
) -> int:
    """Start `groups` of services in order and supervise them until a signal (or too many crashes).

    Args:
        groups: service names; every service of a group is ready before the next group starts.
        grace: seconds a child gets to drain after SIGTERM before it is killed.
        environment: extra environment of a service, given the addresses of the services already
            ready (the gateway's routing comes from them; asked again for the gateway when a service
            comes back at another address, to rewrite the routing file the gateway follows).
        hosts: a child that hosts several services (`ray`) -> the services it reports READY;
            any other child reports itself.

    Returns:
        0 after a clean stop on a signal, 1 if a service failed to start, crashed too often, or did
        not stop cleanly.
    """
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    started: list[list[_Child]] = []
    ready: dict[str, str] = {}
    status = 0
    try:
        for group in groups:
            children = [_Child(service, (hosts or {}).get(service, [service])) for service in group]
            started.append(children)
            for child in children:
                await child.spawn(environment(child.service, dict(ready)))
            waiting = asyncio.gather(*(child.ready for child in children))
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                waiting.cancel()
                return 0
            stopping.cancel()
            for addresses in waiting.result():
                ready.update(addresses)
        sys.stdout.write("READY all\n")
        sys.stdout.flush()
        status = await _supervise([child for group in started for child in group], stop, environment, ready)
    except RuntimeError as exc:
        log.error("%s; stopping the others", exc)
        status = 1
    finally:
        for children in reversed(started):
            if not await _stop(children, grace):
                status = 1
        await asyncio.gather(*(relay for group in started for child in group for relay in child.relays))
    return status
