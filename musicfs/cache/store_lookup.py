"""Asking the chunk store, from the reader: in a worker thread within a deadline, or not at
all when the presence filter says "certainly not stored" (``presence.py``).

A slow or hung cache disk is given ``deadline`` before the reader asks the origin instead;
after one such miss the store is *stalled*, and each chunk gets only
``STALLED_STORE_WAIT`` until the disk answers in time again, so a player stalls once, not
on every chunk. Threads stuck on a hung disk are abandoned; ``limiter`` bounds how many.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from musicfs.cache.planner import piece_key
from musicfs.cache.store import ChunkStore, Rejected
from musicfs.catalog.model import Track
from musicfs.resources import shortage

log = logging.getLogger(__name__)

STALLED_STORE_WAIT = 0.25  # per chunk, while the cache disk is not answering in time


class Skipped:
    """``StoreLookup.get``'s answer when it gave a stalled cache disk only the short wait."""


SKIPPED = Skipped()


class LookupCounts(Protocol):
    known_absent: int  # lookups skipped: the presence filter said "not stored"
    store_timeouts: int
    store_task_errors: int


class StoreLookup:
    def __init__(
        self,
        store: ChunkStore,
        counters: LookupCounts,
        *,
        deadline: float,
        threads: int,
        piece: int,
    ):
        self.store = store
        self.counters = counters
        self.deadline = deadline
        self.piece = piece
        self.limiter = trio.CapacityLimiter(threads)
        # Set when a chunk read missed the deadline: the cache disk is hung or dying.
        self.stalled = False

    async def has(self, version: bytes, n: int) -> bool:
        """Whether chunk ``n`` is stored (no thread when certainly not)."""
        return self.store.may_hold(version, n) and await trio.to_thread.run_sync(
            self.store.has, version, n, limiter=self.limiter
        )

    async def get(
        self,
        track: Track,
        n: int,
        expected: int,
        *,
        patient: bool = False,
        pieces: dict[int, bytes | Rejected | None] | None = None,
    ) -> bytes | Rejected | Skipped | None:
        """The stored chunk, a rejected one, or None: not stored, or the store failed or
        did not answer in time (``SKIPPED`` when that was the short wait of a stalled
        cache disk). ``pieces``: if the chunk is not stored, these pieces of it are looked
        up too, in the same worker thread (a thread hop costs a cold read a millisecond)."""
        version = track.version_key
        may_hold = self.store.may_hold
        if not may_hold(version, n) and not any(
            may_hold(version, piece_key(p)) for p in pieces or ()
        ):
            # Certainly not stored (``presence.py``): no thread hop before the origin.
            self.counters.known_absent += 1
            return None
        stalled = self.stalled and not patient

        def lookup() -> bytes | Rejected | None:
            found = self.store.get(version, n, expected, label=track.path)
            if found is None and pieces is not None:
                for p in list(pieces):
                    size = max(0, min(self.piece, track.size - p * self.piece))
                    pieces[p] = self.store.get(version, piece_key(p), size, label=track.path)
            return found

        with trio.move_on_after(STALLED_STORE_WAIT if stalled else self.deadline):
            try:
                found = await trio.to_thread.run_sync(
                    lookup, limiter=self.limiter, abandon_on_cancel=True
                )
                if self.stalled:
                    self.stalled = False
                    log.warning("cache: the cache disk answers in time again")
                return found
            except Exception as exc:
                # Neither a bug in the cache nor this process running short of memory or
                # threads may cost the player a read the origin can serve.
                self.counters.store_task_errors += 1
                short = shortage(exc)
                if short is not None:
                    log.warning(
                        "cache: reading %r chunk %d: %s; asking the origin",
                        track.path,
                        n,
                        short.strerror,
                    )
                else:
                    log.exception(
                        "cache: reading %r chunk %d failed unexpectedly; asking the origin",
                        track.path,
                        n,
                    )
                return None
        self.counters.store_timeouts += 1
        if stalled:
            return SKIPPED
        if not self.stalled:
            self.stalled = True
            log.warning(
                "cache: reading %r chunk %d took over %.1fs; asking the origin instead, and "
                "giving the cache disk %.2fs a chunk until it answers in time again",
                track.path,
                n,
                self.deadline,
                STALLED_STORE_WAIT,
            )
        return None
