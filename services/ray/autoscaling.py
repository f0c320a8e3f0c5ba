"""Autoscaling of the ray hosting on requests, not on replica calls.

Serve's default autoscaler counts the handle calls ongoing at each replica. The maas front sends many
requests in one call and keeps one call in flight per replica, so that count says nothing of the load.
Instead each replica reports the requests it is working on (`OngoingItems`, through Serve's
`record_autoscaling_stats` hook), and `OngoingItemsPolicy` asks for enough replicas to keep that
number near a target per replica. Serve applies its upscale and downscale delays and the min/max
bounds around the policy's answer.

This module imports only the standard library: Serve pickles the policy by value into its controller
and imports this module when it validates a config.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

ONGOING_ITEMS = "ongoing_items"
"""The custom metric a replica reports: the mean number of requests it worked on since its last report."""


class OngoingItems:
    """Counts the requests a replica is working on, and their time-weighted mean between two reads.

    Serve samples `record_autoscaling_stats` every fraction of a second; a replica answering a front's
    call of 16 requests in a few milliseconds would be idle at most samples. The mean over the time
    since the previous sample counts every request for as long as it was worked on.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Args:
        clock: seconds, monotonic (a test passes its own).
        """
        self._clock = clock
        self._count = 0
        self._since = clock()
        self._last = self._since
        self._area = 0.0

    @property
    def count(self) -> int:
        """Requests being worked on now."""
        return self._count

    def _advance(self) -> None:
        now = self._clock()
        self._area += self._count * (now - self._last)
        self._last = now

    @contextmanager
    def working(self, items: int) -> Iterator[None]:
        """Count `items` requests as worked on for the block.

        Args:
            items: how many requests the block answers.
        """
        self._advance()
        self._count += items
        try:
            yield
        finally:
            self._advance()
            self._count -= items

    def mean(self) -> float:
        """The time-weighted mean of requests worked on since the previous call (or since creation).

        Returns:
            The mean; the current count when no time has passed.
        """
        self._advance()
        elapsed = self._last - self._since
        mean = self._area / elapsed if elapsed > 0 else float(self._count)
        self._area = 0.0
        self._since = self._last
        return mean


class OngoingItemsPolicy:
    """Serve autoscaling policy: replicas = ceil(requests being worked on / target per replica).

    Serve instantiates it once with the config's `policy_kwargs` and calls it every control loop tick.
    It never raises (a raising policy stalls the autoscaling of every application): whatever it cannot
    read, it keeps the current target.
    """

    def __init__(self, target_items_per_replica: float) -> None:
        """Args:
            target_items_per_replica: requests each replica should be working on, on average.

        Raises:
            ValueError: the target is not positive.
        """
        if not target_items_per_replica > 0:
            raise ValueError(f"target_items_per_replica must be positive, not {target_items_per_replica!r}")
        self.target_items_per_replica = float(target_items_per_replica)

    def desired_replicas(self, ongoing_items: dict[Any, float], current: int) -> int:
        """Replicas for the reported load.

        Args:
            ongoing_items: replica -> its mean ongoing requests over Serve's look-back period.
            current: the current target, kept when no replica has reported yet.

        Returns:
            The number of replicas (before Serve's delays and bounds).
        """
        if not ongoing_items:
            return current
        total = sum(ongoing_items.values())
        return math.ceil(total / self.target_items_per_replica)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        """Serve's policy call.

        Args:
            ctx: Serve's `AutoscalingContext` (`aggregated_metrics`, `target_num_replicas`).

        Returns:
            (desired replicas, policy state); the state is always empty.
        """
        try:
            metrics = ctx.aggregated_metrics or {}
            return self.desired_replicas(metrics.get(ONGOING_ITEMS) or {}, ctx.target_num_replicas), {}
        except Exception:
            return getattr(ctx, "target_num_replicas", 1), {}
