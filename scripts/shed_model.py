"""A queueing model of the batcher under a latency target: the share of Poisson arrivals it refuses.

One server; a batch of n calls takes `fixed + per_row x n` milliseconds; calls arrive as a Poisson
process and each must end within `budget` of its arrival. The model follows the batcher's own rules
(services/common/batcher.py), with no noise, no gRPC and no other process: a call is admitted if the next
batch, with every call queued and it, would end in time, or if it would end in time alone; when the
server comes free, calls that would end late even alone are refused, and the batch anchored on the oldest
call takes as many as end in time for it; while that deadline cuts the batch short, the batch anchored on
the next oldest is tried too, up to `anchors` of them, and the largest runs. Nothing is served late.

So it tells what the queueing alone makes of a target: how soft the knee of the shed curve is, and
whether any capacity C gives both at most 1% refused at 0.8 C and, at 1.2 C, a refused share within 5
points of the calls beyond C (issue 23's criteria). The batch cost comes from the latency section's
closed-loop sweep (`docs/benchmarks.md`): a closed loop of c callers runs batches of about c calls, so a
batch of c takes c / (its calls per second) seconds; two concurrencies give the line.

    python scripts/shed_model.py --fixed-ms 6.6 --per-row-ms 4.86 --budget-ms 40.4 --anchors 1 4
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

KNEE_SHED = 0.01
"""The capacity's rule: the highest rate at which at most this share is refused."""
BELOW, ABOVE = 0.8, 1.2
"""The loads, as shares of capacity, that the criteria read the curve at."""
EXCESS_SLACK = 0.05
"""How far the refused share at `ABOVE` may be from the calls beyond capacity."""


@dataclass(frozen=True)
class Server:
    """What a batch costs and the time a call has: a batch of n takes `fixed_ms + per_row_ms x n`."""

    fixed_ms: float
    per_row_ms: float
    budget_ms: float
    max_batch: int = 32

    def cost_ms(self, rows: int) -> float:
        """The time a batch of `rows` calls takes."""
        return self.fixed_ms + self.per_row_ms * rows


def simulate(server: Server, rate: float, seconds: float, anchors: int, seed: int = 0) -> tuple[float, float]:
    """Run Poisson arrivals at `rate` calls per second for `seconds` through the batcher's rules.

    Returns:
        (the share of calls refused, the calls answered per second; all of them within the budget).
    """
    count = round(rate * seconds)
    arrivals = np.sort(np.random.default_rng(seed).uniform(0.0, seconds * 1000, count)).tolist()
    queue: list[float] = []
    free_at, refused = 0.0, 0

    def take(now: float) -> None:
        nonlocal queue, free_at, refused
        live = [a for a in queue if now + server.cost_ms(1) - a <= server.budget_ms]
        refused += len(queue) - len(live)
        best_at, best = 0, 0
        for anchor in range(min(anchors, len(live))):
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
        if best:
            free_at = now + server.cost_ms(best)

    for arrived in arrivals:
        while queue and free_at <= arrived:
            take(free_at)
        if not queue and free_at <= arrived:
            queue.append(arrived)
            take(arrived)
            continue
        start = max(free_at, arrived)
        together = start + server.cost_ms(min(len(queue) + 1, server.max_batch)) - arrived
        alone = start + server.cost_ms(1) - arrived
        if together > server.budget_ms and alone > server.budget_ms:
            refused += 1
        else:
            queue.append(arrived)
    while queue:
        take(free_at)
    return refused / max(1, count), (count - refused) / seconds


def curve(server: Server, rates: np.ndarray, seconds: float, anchors: int, seeds: int = 2):
    """At each of `rates`, the refused share and the calls answered per second, each the mean over `seeds`
    runs: two arrays."""
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
    parser.add_argument("--anchors", type=int, nargs="+", default=[1, 4], help="batch rules: anchors tried")
    parser.add_argument("--rates", type=float, nargs=3, default=[20, 400, 4], help="first, last, step (calls/s)")
    parser.add_argument("--seconds", type=float, default=150, help="simulated seconds per rate and seed")
    args = parser.parse_args()
    server = Server(args.fixed_ms, args.per_row_ms, args.budget_ms, args.max_batch)
    first, last, step = args.rates
    rates = np.arange(first, last + step / 2, step)
    for anchors in args.anchors:
        shed, answered = curve(server, rates, args.seconds, anchors)
        capacity = knee(rates, shed)
        meets = criterion_capacities(rates, shed)
        print(f"anchors {anchors}: capacity (knee at {KNEE_SHED:.0%} refused) {capacity:g} calls/s")
        if capacity:
            print(
                f"  refused at {BELOW:.0%} / {ABOVE:.0%} of it: {np.interp(BELOW * capacity, rates, shed):.1%} / "
                f"{np.interp(ABOVE * capacity, rates, shed):.1%} (the calls beyond it: {1 - 1 / ABOVE:.1%})"
            )
        print(f"  capacities meeting both criteria: {f'{min(meets):g}-{max(meets):g}' if meets else 'none'}")
        every = max(1, len(rates) // 12)
        for rate, share, served in zip(rates[::every], shed[::every], answered[::every], strict=True):
            print(f"  {rate:6.0f} calls/s offered: {share:6.1%} refused, {served:6.1f} calls/s answered")


if __name__ == "__main__":
    main()
