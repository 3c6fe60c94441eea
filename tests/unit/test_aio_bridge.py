"""Layer 1: the trio <-> asyncio bridge the SFTP origin runs on."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import trio

from musicfs.origins.aio_bridge import AsyncioThread, BridgeCancelled


def test_results_and_exceptions_cross_the_bridge() -> None:
    bridge = AsyncioThread("test")

    async def add() -> int:
        await asyncio.sleep(0.01)
        assert threading.current_thread().name == "test"
        return 42

    async def boom() -> None:
        raise ValueError("from asyncio")

    async def main() -> None:
        assert await bridge.call(add) == 42
        with pytest.raises(ValueError, match="from asyncio"):
            await bridge.call(boom)

    try:
        trio.run(main)
    finally:
        bridge.close()


def test_trio_cancellation_cancels_the_asyncio_task() -> None:
    bridge = AsyncioThread("test")
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def main() -> float:
        start = trio.current_time()
        with trio.move_on_after(0.2):
            await bridge.call(forever)
        return trio.current_time() - start

    try:
        took = trio.run(main)
        assert took < 1.0
        assert cancelled.wait(2), "the asyncio side kept running after trio gave up"
    finally:
        bridge.close()


def test_asyncio_side_cancellation_reaches_trio_at_once() -> None:
    bridge = AsyncioThread("test")

    async def cancelled_by_its_loop() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_later(0.05, task.cancel)
        await asyncio.sleep(3600)

    async def main() -> float:
        start = trio.current_time()
        with pytest.raises(BridgeCancelled):
            await bridge.call(cancelled_by_its_loop)
        return trio.current_time() - start

    try:
        assert trio.run(main) < 1.0
    finally:
        bridge.close()


def test_a_blocked_asyncio_loop_never_blocks_trio() -> None:
    """Even if the asyncio thread is stuck, trio callers time out and trio keeps running."""
    bridge = AsyncioThread("test")

    async def hog() -> None:
        time.sleep(1.0)  # deliberately blocks the asyncio loop

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await trio.sleep(0.01)
                ticks += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            with trio.move_on_after(0.3):
                await bridge.call(hog)
            nursery.cancel_scope.cancel()
        return ticks

    try:
        assert trio.run(main) >= 10
    finally:
        bridge.close()


def test_close_cancels_pending_work_and_stops_the_thread() -> None:
    bridge = AsyncioThread("test")

    async def forever() -> None:
        await asyncio.sleep(3600)

    async def main() -> float:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def caller() -> None:
                with pytest.raises(BridgeCancelled):
                    await bridge.call(forever)

            nursery.start_soon(caller)
            await trio.sleep(0.1)
            await trio.to_thread.run_sync(bridge.close)
        return trio.current_time() - start

    assert trio.run(main) < 5
    assert bridge._thread is not None and not bridge._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        _ = bridge.loop
