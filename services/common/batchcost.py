"""What a batch costs: compute time as a line in its work (rows, or tokens for sequence models),
fitted online from the batches a version runs, forgetting old batches so the fit follows the machine.

A pure object (no clock, no event loop): the batcher feeds it each batch's work and time, and asks it
what a batch of some work would take, with a margin for the batches that take longer than the line.
"""

from __future__ import annotations

import math
from collections import deque

DECAY = 0.98
"""Weight of the fit's past per batch observed: its memory is about 1 / (1 - DECAY) = 50 batches."""
MIN_BATCHES = 5
"""Batches observed before the fit is trusted."""
MARGIN_QUANTILE = 0.95
ERROR_WINDOW = 100
"""The margin: the `MARGIN_QUANTILE` quantile of how much longer than the line the last `ERROR_WINDOW`
batches took (0 if at least that share of them took no longer)."""
CLIP_SHARE = 0.6
"""Once the fit is trusted, a batch slower than its prediction by more than this share of it counts as
only that slow: a batch stalled by something else on the machine must not teach the fit that every batch
is slow. A machine that really slows down still moves the fit, by that much per batch. The clip is a
share of the prediction, not a multiple of the recent errors, so that stalls in a row cannot feed the
margin that lets the next stall in."""
LATE_SHARE = 0.005
"""With a latency target, the share of served requests that may end past it: admission steers toward it."""
STEER_SHARE = 0.05
"""How far one late request moves what admission forgives of what it adds to the cost fit's prediction, as a
share of the target (a request in time moves it back by `LATE_SHARE / (1 - LATE_SHARE)` of that)."""


class BatchCost:
    """An exponentially weighted least-squares line `seconds = fixed + per_unit * work`, and the spread
    of the batches around it."""

    def __init__(self, decay: float = DECAY) -> None:
        """Args:
        decay: weight of the past per observation (0 < decay < 1).
        """
        self._decay = decay
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self._errors: deque[float] = deque(maxlen=ERROR_WINDOW)
        self._margin = 0.0
        self._line = (0.0, 0.0)
        self.batches = 0

    @property
    def ready(self) -> bool:
        """True once enough batches were observed to predict from."""
        return self.batches >= MIN_BATCHES

    def line(self) -> tuple[float, float]:
        """The fitted (fixed, per_unit) nanoseconds, both at least 0 (solved once per batch observed, since
        every request's admission and every batch's sizing predicts from it)."""
        return self._line

    def _solve(self) -> tuple[float, float]:
        """The least-squares line of the batches observed. While every batch observed had about the same
        work, the slope cannot be told from the intercept; the line then goes through the origin (a batch
        of twice the work takes twice the time), which overestimates larger batches: the safe side."""
        spread = self._w * self._xx - self._x * self._x
        if spread > 1e-6 * self._w * self._xx:
            per_unit = max(0.0, (self._w * self._xy - self._x * self._y) / spread)
            fixed = (self._y - per_unit * self._x) / self._w
            if fixed >= 0:
                return fixed, per_unit
        return 0.0, (self._y / self._x if self._x else 0.0)

    def predict_ns(self, work: float) -> float:
        """Nanoseconds a batch of `work` takes on the fitted line."""
        fixed, per_unit = self.line()
        return fixed + per_unit * work

    def margin_ns(self) -> float:
        """How much longer than the line a slow batch takes: the `MARGIN_QUANTILE` quantile of the recent
        batches' errors."""
        return self._margin

    def bound_ns(self, work: float) -> float:
        """A batch of `work`'s time, with the margin: what a deadline must leave room for."""
        return self.predict_ns(work) + self.margin_ns()

    def observe(self, work: float, ns: float) -> None:
        """Add one batch: its work and its compute time in nanoseconds."""
        if self.batches:
            predicted = self.predict_ns(work)
            if self.ready:
                ns = min(ns, predicted * (1 + CLIP_SHARE))
            self._errors.append(ns - predicted)
            ranked = sorted(self._errors)
            self._margin = max(0.0, ranked[math.ceil(MARGIN_QUANTILE * len(ranked)) - 1])
        d = self._decay
        self._w = d * self._w + 1
        self._x = d * self._x + work
        self._y = d * self._y + ns
        self._xx = d * self._xx + work * work
        self._xy = d * self._xy + work * ns
        self._line = self._solve()
        self.batches += 1


class Steer:
    """How much of what admission adds to a cost fit's prediction it forgives: the fit's margin (the slow
    batches' spread), and for the native front the time its calls take to be written. Both are added to
    every prediction, so admission that counts them whole refuses requests that would have been in time.
    Each request answered after the target takes `STEER_SHARE` of the target off what is forgiven, each in
    time gives a little back, so that about `LATE_SHARE` of the requests served end late; never less than
    nothing, nor more than what was added."""

    def __init__(self) -> None:
        self.forgiven_ns = 0.0

    def observe(self, arrivals: list[int], done_ns: int, target_ns: float, margin_ns: float) -> None:
        """Learn from requests that arrived at `arrivals` and were answered at `done_ns` (one clock, in
        nanoseconds), against the target `target_ns`; `margin_ns` is the fit's margin now."""
        late = sum(done_ns - arrival > target_ns for arrival in arrivals)
        self.count(late, len(arrivals) - late, target_ns, margin_ns)

    def count(self, late: int, in_time: int, target_ns: float, most_ns: float) -> None:
        """Learn from `late` requests answered after the target `target_ns` and `in_time` within it; forgive
        at most `most_ns` (the margin, and whatever else admission adds to the cost fit's prediction)."""
        step = STEER_SHARE * target_ns
        moved = self.forgiven_ns + step * (in_time * LATE_SHARE / (1 - LATE_SHARE) - late)
        self.forgiven_ns = min(most_ns, max(0.0, moved))
