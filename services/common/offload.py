"""Keep the event loop free: a large request is prepared on worker threads, a chunk at a time.

A request of at most a service's `inline_max_bytes` is prepared inline, on the event loop, as it
always was: the hop to a worker thread would cost more than the work. A larger one (texts to
tokenize, images to decode, tensors to unpack) is cut into chunks of about `CHUNK_BYTES` that run one
after another on worker threads, so health checks and other callers are served meanwhile. When the
caller goes away (it cancelled, or its deadline passed, and gRPC cancels the handler), no further
chunk starts: at most the chunk in progress finishes, unseen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

CHUNK_BYTES = 1 << 16


def chunks(costs: Sequence[int], size: int = CHUNK_BYTES) -> list[slice]:
    """Cut items into consecutive slices whose costs add up to about `size` each.

    Args:
        costs: each item's cost (bytes, pixels, ...).
        size: the cost a slice reaches before the next one starts; every slice holds at least one item.

    Returns:
        Slices covering every item in order.
    """
    parts: list[slice] = []
    start = total = 0
    for index, cost in enumerate(costs):
        total += cost
        if total >= size:
            parts.append(slice(start, index + 1))
            start, total = index + 1, 0
    if start < len(costs):
        parts.append(slice(start, len(costs)))
    return parts


async def run(work: Callable[[], T], cost: int, inline_max: int) -> T:
    """Run `work` inline if `cost` is at most `inline_max`, else on a worker thread.

    Args:
        work: the work, with its arguments bound.
        cost: what the work is over, in bytes (or pixels, ids x 8, ...).
        inline_max: the largest cost run inline.

    Returns:
        What `work` returned.
    """
    if cost <= inline_max:
        return work()
    return await asyncio.to_thread(work)


async def map_chunks(work: Callable[[slice], T], costs: Sequence[int], inline_max: int) -> list[T]:
    """Run `work` over slices of items: inline over all of them if their costs add up to at most
    `inline_max`, else over chunks of about `CHUNK_BYTES`, one after another on worker threads.

    Args:
        work: the work over one slice of the items.
        costs: each item's cost.
        inline_max: the largest total cost run inline.

    Returns:
        What `work` returned for each slice, in order.

    Raises:
        asyncio.CancelledError: the caller went away; no chunk after the one in progress ran.
    """
    if sum(costs) <= inline_max:
        return [work(slice(0, len(costs)))]
    return [await asyncio.to_thread(work, part) for part in chunks(costs)]
