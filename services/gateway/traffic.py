"""Traffic policy pieces of the gateway: a weighted picker for splits and a retry budget."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence

BUDGET_WINDOW_SECONDS = 10.0


class WeightedPicker:
    """Smooth weighted round-robin (nginx's): over any run of calls each backend's share follows its
    weight as closely as whole calls allow (90/10 gives exactly 9 of every 10), interleaved rather
    than in blocks, and with no randomness."""

    def __init__(self, weights: Sequence[int]) -> None:
        """Start a picker over backends with these weights.

        Args:
            weights: one non-negative weight per backend, not all 0.
        """
        self.weights = list(weights)
        self._current = [0] * len(self.weights)

    def pick(self, avoid: Collection[int] = ()) -> int:
        """The index of the next backend, skipping those in `avoid` unless every weighted one is.

        Args:
            avoid: indices not to pick (backends a call already failed on).
        """
        allowed = [i for i, w in enumerate(self.weights) if w and i not in avoid]
        if not allowed:
            allowed = [i for i, w in enumerate(self.weights) if w]
        total = 0
        for i in allowed:
            self._current[i] += self.weights[i]
            total += self.weights[i]
        chosen = max(allowed, key=lambda i: self._current[i])
        self._current[chosen] -= total
        return chosen


class RetryBudget:
    """Retries may add at most `ratio` of the calls plus `min_per_second` a second, with up to 10
    seconds' worth saved up, so a failing target never multiplies the load on it by more than that.

    A token bucket: every call deposits `ratio` tokens, time deposits `min_per_second` a second, a
    retry withdraws one.
    """

    def __init__(self, ratio: float, min_per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        """Start with a full budget.

        Args:
            ratio: retries allowed per call made (0.2: one retry for every five calls).
            min_per_second: retries allowed a second whatever the traffic (so rare calls can retry too).
            clock: seconds on a monotonic clock (tests pass their own).
        """
        self.ratio = ratio
        self.min_per_second = min_per_second
        self._clock = clock
        self._cap = max(1.0, min_per_second * BUDGET_WINDOW_SECONDS)
        self._tokens = self._cap
        self._stamp = clock()

    def _refill(self, extra: float) -> None:
        now = self._clock()
        self._tokens = min(self._cap, self._tokens + (now - self._stamp) * self.min_per_second + extra)
        self._stamp = now

    def record_call(self) -> None:
        """Count one call (not a retry) toward the budget."""
        self._refill(self.ratio)

    def try_spend(self) -> bool:
        """Take one retry from the budget.

        Returns:
            True if the retry may go ahead.
        """
        self._refill(0.0)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
