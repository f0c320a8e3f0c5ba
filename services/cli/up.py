"""`maas up`: every service as its own process on this machine, supervised.

Prints `READY <service> <host>:<port>` as each becomes healthy, then `READY all`. Each child's log lines
(its stderr) are copied to ours prefixed with its service name (`vision | ...`). On Ctrl-C or
SIGTERM every child is sent SIGTERM and drains; one that outlives its grace is killed. If a child
dies, the rest are stopped and `maas up` exits non-zero.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from services.cli.processes import spawn

log = logging.getLogger("maas.up")

KILL_MARGIN_SECONDS = 5.0


class _Child:
    def __init__(self, service: str, process: asyncio.subprocess.Process, reports: list[str]) -> None:
        self.service = service
        self.process = process
        self.ready = asyncio.get_running_loop().create_future()
        self._reports = reports
        self._addresses: dict[str, str] = {}

    async def relay(self) -> None:
        """Copy the child's stdout to ours, resolving `ready` (service -> address) once every service
        it hosts has printed its READY line."""
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace")
            sys.stdout.write(line)
            sys.stdout.flush()
            words = line.split()
            if len(words) == 3 and words[0] == "READY" and words[1] in self._reports:
                self._addresses[words[1]] = words[2]
                if len(self._addresses) == len(self._reports) and not self.ready.done():
                    self.ready.set_result(dict(self._addresses))
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"{self.service} exited before it was ready"))

    async def relay_logs(self) -> None:
        """Copy the child's stderr to ours, each line prefixed with the service's name."""
        assert self.process.stderr is not None
        prefix = f"{self.service} | ".encode()
        async for raw in self.process.stderr:
            sys.stderr.buffer.write(prefix + raw)
            sys.stderr.flush()


async def _spawn(service: str, env: dict[str, str], reports: list[str]) -> _Child:
    return _Child(service, await spawn(service, env=env, pipe_stderr=True), reports)


async def _stop(children: list[_Child], grace: float) -> bool:
    """SIGTERM every child still running and wait for it (killing one that outlives its grace).

    Returns:
        True if every child that was stopped here exited cleanly (status 0).
    """
    stopping = [child for child in children if child.process.returncode is None]
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


async def up(
    groups: list[list[str]],
    grace: float,
    environment: Callable[[str, dict[str, str]], dict[str, str]],
    hosts: dict[str, list[str]] | None = None,
) -> int:
    """Start `groups` of services in order and supervise them until a signal or a child's death.

    Args:
        groups: service names; every service of a group is ready before the next group starts.
        grace: seconds a child gets to drain after SIGTERM before it is killed.
        environment: extra environment of a service, given the addresses of the services already
            ready (the gateway's routing comes from them).
        hosts: a child that hosts several services (`ray`) -> the services it reports READY;
            any other child reports itself.

    Returns:
        0 after a clean stop on a signal, 1 if a service failed.
    """
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    children: list[_Child] = []
    relays: list[asyncio.Task] = []
    ready: dict[str, str] = {}
    status = 0
    try:
        for group in groups:
            started = [
                await _spawn(service, environment(service, dict(ready)), (hosts or {}).get(service, [service]))
                for service in group
            ]
            children.extend(started)
            relays.extend(
                asyncio.create_task(relay()) for child in started for relay in (child.relay, child.relay_logs)
            )
            waiting = asyncio.gather(*(child.ready for child in started))
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
        exits = [asyncio.create_task(child.process.wait()) for child in children]
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({*exits, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stopping not in done:
            dead = next(child for child, task in zip(children, exits, strict=True) if task in done)
            log.error("%s exited with status %s; stopping the others", dead.service, dead.process.returncode)
            status = 1
        stopping.cancel()
    except RuntimeError as exc:
        log.error("%s; stopping the others", exc)
        status = 1
    finally:
        if not await _stop(children, grace):
            status = 1
        await asyncio.gather(*relays, return_exceptions=True)
    return status
