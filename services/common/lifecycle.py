"""A server's lifecycle: loading, serving, draining; and the count of calls in flight."""

from __future__ import annotations

import asyncio


class Lifecycle:
    """Tracks whether a server takes new calls and waits for in-flight calls to finish.

    A server starts not ready (models loading), becomes ready once `mark_serving()` is called, and
    stops taking new calls for good at `start_draining()`.
    """

    def __init__(self) -> None:
        self._serving = False
        self._draining = False
        self._in_flight = 0
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
        """Calls entered and not yet exited."""
        return self._in_flight

    def mark_serving(self) -> None:
        """Record that every model is loaded and the server takes calls."""
        self._serving = True

    def start_draining(self) -> None:
        """Refuse new calls from now on; calls in flight go on."""
        self._draining = True

    def enter(self) -> None:
        """Count a call as in flight."""
        self._in_flight += 1
        self._idle.clear()

    def exit(self) -> None:
        """Count a call as finished."""
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
