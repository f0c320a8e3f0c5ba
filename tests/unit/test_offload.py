"""Preparing large requests off the event loop, without sockets."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.common import offload


def test_chunks_cover_every_item_in_order_at_about_the_chunk_size():
    assert offload.chunks([10, 10, 10, 10, 10], size=20) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert offload.chunks([100, 1, 1], size=20) == [slice(0, 1), slice(1, 3)]
    assert offload.chunks([], size=20) == []


async def test_small_work_runs_inline_and_large_work_on_worker_threads():
    loop_thread = threading.get_ident()

    def where(part: slice) -> tuple[int, slice]:
        return threading.get_ident(), part

    inline = await offload.map_chunks(where, [10] * 4, inline_max=40)
    assert inline == [(loop_thread, slice(0, 4))]
    chunked = await offload.map_chunks(where, [offload.CHUNK_BYTES] * 3, inline_max=40)
    assert [part for _, part in chunked] == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert all(thread != loop_thread for thread, _ in chunked)
    assert await offload.run(threading.get_ident, cost=41, inline_max=40) != loop_thread
    assert await offload.run(threading.get_ident, cost=40, inline_max=40) == loop_thread


async def test_a_cancelled_caller_stops_the_work_after_the_chunk_in_progress():
    started, release = threading.Event(), threading.Event()
    done: list[slice] = []

    def work(part: slice) -> None:
        started.set()
        release.wait(10)
        done.append(part)

    task = asyncio.create_task(offload.map_chunks(work, [offload.CHUNK_BYTES] * 5, inline_max=0))
    assert await asyncio.to_thread(started.wait, 10)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)
    assert done == [slice(0, 1)]
