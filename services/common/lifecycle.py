"""A server's lifecycle: loading, serving, draining; and the count of calls in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from services.common.errors import Draining


class Lifecycle:
    """Tracks whether a server takes new calls and waits for in-flight calls to finish.

    A server starts not ready (models loading), becomes ready once `mark_serving()` is called, and
    stops taking new calls for good at `start_draining()`: from then on a call is refused at `admitted()`
    and not counted in flight.
    """

    def __init__(self) -> None:
        self._serving = False
        self._draining = False
        self._in_flight = 0
        self._last_arrival = 0.0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ready(self) -> bool:
        """True while the server is serving and not draining."""
        return self._serving and not self._draining

    @property
    def draining(self) -> bool:
        """True once shutdown has begun."""
        return self._draining

    @property
    def in_flight(self) -> int:
        """Calls admitted and not yet finished."""
        return self._in_flight

    def mark_serving(self) -> None:
        """Record that every model is loaded and the server takes calls."""
        self._serving = True

    def start_draining(self) -> None:
        """Refuse new calls from now on; calls in flight go on."""
        self._draining = True

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Count a call as in flight for the duration of the block, unless the server is draining.

        Raises:
            Draining: the server is draining; the call is refused before anything of it ran.
        """
        self._last_arrival = time.monotonic()
        if self._draining:
            raise Draining("server is shutting down; retry on another replica")
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight.

        Args:
            timeout: seconds to wait at most.

        Returns:
            True if the server went idle, False if calls were still in flight at the timeout.
        """
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def wait_quiet(self, quiet: float, timeout: float) -> None:
        """Wait until no call has arrived for `quiet` seconds, or at most `timeout` seconds.

        While draining, the calls that still arrive come from clients that have not yet seen the server
        go NOT_SERVING; they are refused (and may be retried elsewhere) until the clients move away.
        """
        deadline = time.monotonic() + timeout
        while True:
            wait = min(self._last_arrival + quiet, deadline) - time.monotonic()
            if wait <= 0:
                return
            await asyncio.sleep(wait)
