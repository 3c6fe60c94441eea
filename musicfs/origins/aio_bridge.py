"""An asyncio event loop in a dedicated thread, callable from trio with cancellation both ways.

asyncssh is asyncio-only; pyfuse3 runs on trio. Rather than mixing loops, each SFTP origin
owns one asyncio loop in its own daemon thread, and trio code awaits coroutines on it:

* trio -> asyncio: when the trio caller is cancelled (a read's deadline passed), the
  asyncio task is cancelled too, so nothing keeps running for a request nobody awaits;
* asyncio -> trio: if the asyncio task is cancelled on its side (the loop is shutting down,
  a connection was torn down), the trio caller gets ``BridgeCancelled`` at once instead of
  waiting forever.

The trio side never blocks on the asyncio thread: it only waits on a trio event.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import trio

log = logging.getLogger(__name__)
T = TypeVar("T")


class BridgeCancelled(Exception):
    """The asyncio side cancelled the call (shutdown or connection teardown)."""


class AsyncioThread:
    def __init__(self, name: str):
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: asyncio thread already closed")
            if self._loop is None:
                ready = threading.Event()
                loop = asyncio.new_event_loop()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.set_exception_handler(_quiet_handler)
                    loop.call_soon(ready.set)
                    try:
                        loop.run_forever()
                    finally:
                        loop.close()

                self._thread = threading.Thread(target=main, name=self.name, daemon=True)
                self._thread.start()
                ready.wait(10)
                self._loop = loop
            return self._loop

    async def call(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``fn()`` on the asyncio loop and wait for it from trio."""
        loop = self.loop
        cfut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(fn(), loop)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        cfut.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            # trio cancelled us: cancel the asyncio task as well (best effort; if it has
            # already finished its result is simply dropped).
            cfut.cancel()
            raise
        try:
            return cfut.result()
        except concurrent.futures.CancelledError:
            raise BridgeCancelled(f"{self.name}: call cancelled on the asyncio side") from None

    def close(self, cleanup: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
        """Run ``cleanup`` on the loop (bounded), cancel what is left, stop the thread."""
        with self._lock:
            loop, self._closed = self._loop, True
        if loop is None or loop.is_closed():
            return

        async def shutdown() -> None:
            if cleanup is not None:
                try:
                    await asyncio.wait_for(cleanup(), 5)
                except Exception as exc:
                    log.debug("%s: cleanup failed: %s", self.name, exc)
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        except Exception as exc:
            log.debug("%s: shutdown: %r", self.name, exc)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)


def _quiet_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # asyncssh leaves helper tasks whose "connection lost" nobody retrieves once the
    # request that started them has failed; the failure itself is reported by the caller.
    log.debug("asyncio: %s: %r", context.get("message"), context.get("exception"))
