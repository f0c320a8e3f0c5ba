"""A queueing model of the batcher under a latency target: the share of Poisson arrivals it refuses.

One server; a batch of n calls takes `fixed + per_row x n` milliseconds; calls arrive as a Poisson
process and each must end within `budget` of its arrival. The model follows the batcher's rules for
admission and batches (services/common/batcher.py: `_admit`, `_take`): an idle server runs a call at
once; a busy one admits it if the batch running and every call queued, with it, in full batches, would
end in time; when the server comes free, calls that would end late even alone are refused, and the batch
anchored on the oldest call takes as many as end in time for it; while that deadline left a call out,
the batch anchored on the next oldest is tried too, and the largest runs. The batcher searches the anchors
up to the first whose batch no deadline cuts (`_anchored`: the same batch size, though on a tie it may
pick another anchor than the oldest); the model tries them in turn, and can also stop after `anchors` of
them, the rule before, to compare.
Nothing is served late. Left out: noise of any kind, and so the cost fit's margin and what admission
forgives of it, the probes of a version that refused everything, and the wait for batch-mates (with a
target, the batcher waits only while a full batch would still end in time).

So it tells what the queueing alone makes of a target, for a given batch cost: how soft the knee of the
shed curve is, and whether any capacity C gives both at most 1% refused at 0.8 C and, at 1.2 C, a refused
share within 5 points of the calls beyond C (issue 23's criteria). The batch cost comes from the latency
section's closed-loop sweep (`docs/benchmarks.md`): a closed loop of c callers runs batches of about c
calls, so a batch of c takes about c / (its calls per second) seconds; two concurrencies give the line.
That time includes the client's and the network's, so the fixed cost it gives is an upper bound.

    python scripts/shed_model.py --fixed-ms 6.6 --per-row-ms 4.86 --budget-ms 40.4 --anchors 1 4 0
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np

KNEE_SHED = 0.01
"""The capacity's rule: the highest rate at which at most this share is refused."""
BELOW = 0.8
"""The load, as a share of capacity, at which at most `KNEE_SHED` may be refused."""
ABOVE = 1.2
"""The load, as a share of capacity, at which the refused share should be the calls beyond capacity."""
EXCESS_SLACK = 0.05
"""How far the refused share at `ABOVE` may be from the calls beyond capacity."""


@dataclass(frozen=True)
class Server:
    """What a batch costs and the time a call has: a batch of n takes `fixed_ms + per_row_ms x n`."""

    fixed_ms: float
    per_row_ms: float
    budget_ms: float
    max_batch: int = 32

    def cost_ms(self, rows: float) -> float:
        """The time a batch of `rows` calls takes."""
        return self.fixed_ms + self.per_row_ms * rows

    def drain_ms(self, rows: int) -> float:
        """The time `rows` queued calls take in full batches (the batcher's `_drain_ns`, with no margin)."""
        batches = math.ceil(rows / self.max_batch)
        return batches * self.cost_ms(rows / batches)


@dataclass(frozen=True)
class Outcome:
    """What became of a run's calls."""

    refused_on_arrival: int
    refused_at_take: int
    served: int


def run(server: Server, arrivals_ms: list[float], anchors: int) -> Outcome:
    """Put calls arriving at `arrivals_ms` (in order) through the batcher's rules, trying up to `anchors`
    anchors per batch (0: up to the first whose deadline cuts nothing, as the batcher), until every call is
    served or refused."""
    queue: list[float] = []
    free_at, on_arrival, at_take, served = 0.0, 0, 0, 0

    def take(now: float) -> None:
        nonlocal queue, free_at, at_take, served
        live = [a for a in queue if now + server.cost_ms(1) - a <= server.budget_ms]
        at_take += len(queue) - len(live)
        best_at, best = 0, 0
        for anchor in range(min(anchors or len(live), len(live))):
            rows, cut = 1, False
            while anchor + rows < len(live) and rows < server.max_batch:
                if now + server.cost_ms(rows + 1) > live[anchor] + server.budget_ms:
                    cut = True
                    break
                rows += 1
            if rows > best:
                best_at, best = anchor, rows
            if not cut:
                break
        queue = live[:best_at] + live[best_at + best :]
        served += best
        if best:
            free_at = now + server.cost_ms(best)

    for arrived in arrivals_ms:
        while queue and free_at <= arrived:
            take(free_at)
        if not queue and free_at <= arrived:
            queue.append(arrived)
            take(arrived)
        elif free_at + server.drain_ms(len(queue) + 1) - arrived > server.budget_ms:
            on_arrival += 1
        else:
            queue.append(arrived)
    while queue:
        take(free_at)
    return Outcome(on_arrival, at_take, served)


def simulate(server: Server, rate: float, seconds: float, anchors: int, seed: int = 0) -> tuple[float, float]:
    """Run Poisson arrivals at `rate` calls per second for `seconds` (as many as the rate gives, placed at
    random) through the batcher's rules.

    Args:
        server: the batch cost and the budget.
        rate: calls per second.
        seconds: how long the arrivals last.
        anchors: how many anchors a batch may try (0: the batcher's rule, up to the first uncut).
        seed: the arrivals' random seed.

    Returns:
        (the share of calls refused, the calls served per second of arrivals; all of them in time).
    """
    count = round(rate * seconds)
    arrivals = np.sort(np.random.default_rng(seed).uniform(0.0, seconds * 1000, count)).tolist()
    outcome = run(server, arrivals, anchors)
    return (outcome.refused_on_arrival + outcome.refused_at_take) / max(1, count), outcome.served / seconds


def curve(
    server: Server, rates: np.ndarray, seconds: float, anchors: int, seeds: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """At each of `rates`, the refused share and the calls served per second (`simulate`), each the mean
    over `seeds` runs.

    Returns:
        (refused shares, calls served per second), one of each per rate.
    """
    runs = np.array([[simulate(server, rate, seconds, anchors, seed) for seed in range(seeds)] for rate in rates])
    return runs[:, :, 0].mean(axis=1), runs[:, :, 1].mean(axis=1)


def knee(rates: np.ndarray, shed: np.ndarray) -> float:
    """The capacity: the highest rate of `rates` at which at most `KNEE_SHED` is refused (0 if none)."""
    kept = rates[shed <= KNEE_SHED]
    return float(kept.max()) if kept.size else 0.0


def criterion_capacities(rates: np.ndarray, shed: np.ndarray) -> list[float]:
    """The capacities C among `rates` for which the curve refuses at most `KNEE_SHED` at `BELOW` x C and,
    at `ABOVE` x C, a share within `EXCESS_SLACK` of the calls beyond C (read between rates linearly; only
    where `ABOVE` x C is within `rates`)."""
    excess = 1 - 1 / ABOVE
    return [
        float(c)
        for c in rates
        if ABOVE * c <= rates[-1]
        and np.interp(BELOW * c, rates, shed) <= KNEE_SHED
        and abs(np.interp(ABOVE * c, rates, shed) - excess) <= EXCESS_SLACK
    ]


def main() -> None:
    """Print each batch rule's shed curve, its knee, and the capacities that meet the criteria."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixed-ms", type=float, required=True, help="a batch's fixed cost")
    parser.add_argument("--per-row-ms", type=float, required=True, help="a batch's cost per call")
    parser.add_argument("--budget-ms", type=float, required=True, help="the time a call has (MAX_LATENCY_MS)")
    parser.add_argument("--max-batch", type=int, default=32, help="MAX_BATCH_SIZE")
    parser.add_argument(
        "--anchors", type=int, nargs="+", default=[0], help="batch rules: most anchors tried (0: the batcher's rule)"
    )
    parser.add_argument(
        "--rates", type=float, nargs=3, default=[20, 400, 4], metavar=("FIRST", "LAST", "STEP"), help="calls/s"
    )
    parser.add_argument("--seconds", type=float, default=150, help="simulated seconds per rate and seed")
    args = parser.parse_args()
    server = Server(args.fixed_ms, args.per_row_ms, args.budget_ms, args.max_batch)
    first, last, step = args.rates
    rates = np.arange(first, last + step / 2, step)
    for anchors in args.anchors:
        shed, served = curve(server, rates, args.seconds, anchors)
        capacity = knee(rates, shed)
        meets = criterion_capacities(rates, shed)
        rule = f"at most {anchors} anchors" if anchors else "the batcher's anchors"
        print(f"{rule}: capacity (knee at {KNEE_SHED:.0%} refused) {capacity:g} calls/s")
        if capacity:
            print(
                f"  refused at {BELOW:.0%} / {ABOVE:.0%} of it: {np.interp(BELOW * capacity, rates, shed):.1%} / "
                f"{np.interp(ABOVE * capacity, rates, shed):.1%} (the calls beyond it: {1 - 1 / ABOVE:.1%})"
            )
        print(f"  capacities meeting both criteria: {', '.join(f'{c:g}' for c in meets) or 'none'}")
        every = max(1, len(rates) // 12)
        for rate, share, answered in zip(rates[::every], shed[::every], served[::every], strict=True):
            print(f"  {rate:6.0f} calls/s offered: {share:6.1%} refused, {answered:6.1f} calls/s served")


if __name__ == "__main__":
    main()
