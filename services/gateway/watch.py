"""Live reload of the routing file (and of the TLS files the gateway dials its targets with): the
settings the gateway reads again after it starts.

The file is polled (read and hashed every `MAAS_GATEWAY_RELOAD_INTERVAL_SECONDS`) rather than
watched with inotify: kubelet updates a mounted ConfigMap by writing a new directory and swapping
the `..data` symlink, so the path's own inode never changes; reading the path follows the symlink to
whichever version is current, and comparing content sees every update, whatever the timestamps say.
A file that does not parse or validate is rejected with one log line and the previous routing keeps
serving; calls in flight always finish on the routing they started with.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from services.gateway.router import Router
from services.gateway.routing import RoutingError, parse_routing, read_routing_text

log = logging.getLogger(__name__)


def digest(text: str) -> str:
    """The SHA-256 of a routing file's text, to tell versions apart."""
    return hashlib.sha256(text.encode()).hexdigest()


class RoutingWatcher:
    """Polls the routing file and hands each new valid routing to the router."""

    def __init__(self, path: Path, router: Router, interval: float, loaded: str) -> None:
        """Watch `path` for content other than `loaded`.

        Args:
            path: the routing file.
            router: the router to update.
            interval: seconds between checks.
            loaded: digest of the text the router's routing came from.
        """
        self.path = path
        self._router = router
        self._interval = interval
        self._seen = loaded
        self.reloads = 0
        self.rejections = 0

    def check(self) -> None:
        """Read the file once; if its content is new, apply it or reject it with a log line."""
        try:
            text = read_routing_text(self.path)
        except RoutingError as exc:
            if self._seen != str(exc):
                self._seen = str(exc)
                self.rejections += 1
                log.error("cannot read the routing file, still serving the previous routing: %s", exc)
            return
        current = digest(text)
        if current == self._seen:
            return
        self._seen = current
        try:
            routing = parse_routing(text, str(self.path))
        except RoutingError as exc:
            self.rejections += 1
            log.error("rejected the new routing file, still serving the previous routing: %s", exc)
            return
        self._router.update(routing)
        self.reloads += 1
        log.info(
            "routing file %s reloaded: %d targets, %d models",
            self.path,
            len(routing.targets),
            len(routing.models),
            extra={"routing_sha256": current},
        )

    async def run(self) -> None:
        """Check the file, and the TLS files the gateway dials with, every interval until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            self.check()
            self._router.reload_tls()
