"""The reader's housekeeping task: eviction and saved access times in the background
(``ChunkStore.maintain``) every ``maintain_interval`` or when woken (the store passed its
high watermark, a reload changed the limits), and, in passthrough mode, a retry of the
unusable cache every ``retry_interval`` seconds (``ChunkStore.probe``)."""

from __future__ import annotations

import logging
import time

import trio

from musicfs.cache.modes import CacheMode
from musicfs.cache.store import ChunkStore

log = logging.getLogger(__name__)


class Housekeeping:
    def __init__(self, store: ChunkStore, *, retry_interval: float, maintain_interval: float):
        self.store = store
        self.retry_interval = retry_interval
        self.maintain_interval = maintain_interval
        self._wake = trio.Event()
        self._last_probe = 0.0

    def opened(self) -> None:
        """The store was just opened: the first retry is a full interval away."""
        self._last_probe = time.monotonic()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            with trio.move_on_after(self.maintain_interval):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                if self.store.mode is CacheMode.PASSTHROUGH:
                    if time.monotonic() - self._last_probe >= self.retry_interval:
                        self._last_probe = time.monotonic()
                        await trio.to_thread.run_sync(self.store.probe)
                else:
                    await trio.to_thread.run_sync(self.store.maintain)
            except Exception:
                log.exception("cache: housekeeping failed; retrying later")
