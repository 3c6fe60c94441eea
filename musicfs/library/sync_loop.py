"""The background sync: sync the origins into the catalog, publish the new tree, feed the
search index what changed, let smart pins follow -- then wait for the next interval or
for a nudge (start-up, SIGHUP)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from musicfs.catalog.served import ServedTree
from musicfs.catalog.tree import TreeView
from musicfs.library.coordinator import SyncCoordinator, TreePublisher
from musicfs.search import SearchIndex

RETRY_AFTER_FAILED_LISTING = 60.0  # at most, however long the scan interval


class SyncLoop:
    def __init__(
        self,
        library: SyncCoordinator,
        publish: Callable[[ServedTree], object],
        tree: Callable[[], TreeView],
        search: SearchIndex,
        *,
        scan_interval: Callable[[], float],
        after_index: Callable[[], Awaitable[object]] | None = None,
    ):
        self.library = library
        self.publisher = TreePublisher(library, publish)
        self.tree = tree
        self.search = search
        self.scan_interval = scan_interval
        self.after_index = after_index
        self._now = trio.Event()

    def trigger(self) -> None:
        """Start the next sync now (after a reload that changed origins or names)."""
        self._now.set()

    async def run(self) -> None:
        indexed: int | None = None  # the tree generation the search index was last fed
        # The pins evaluated this tree and index at start-up (``PinManager.run``): only
        # what the first update changes needs them evaluated again.
        evaluated: int | None = self.tree().generation
        while True:
            self._now = trio.Event()
            ok = False

            async def sync() -> None:
                nonlocal ok
                ok = await self.library.sync()

            await self.publisher.run_while(sync)
            tree = self.tree()
            # Only a new tree (or a failed update, or the first pass) needs an index diff.
            if tree.generation != indexed:
                stats = await self.search.update_async(tree)
                if stats is not None:
                    indexed = tree.generation
                    changed = stats.added or stats.removed or stats.rebuilt
                    if self.after_index is not None and (changed or tree.generation != evaluated):
                        await self.after_index()
                    evaluated = None
            interval = self.scan_interval()
            # An origin that could not be listed is retried sooner than the full interval;
            # an interval of 0 means "only when asked" (start-up, SIGHUP).
            retry = min(interval, RETRY_AFTER_FAILED_LISTING)
            delay = (interval if ok else retry) if interval > 0 else float("inf")
            with trio.move_on_after(delay):
                await self._now.wait()
