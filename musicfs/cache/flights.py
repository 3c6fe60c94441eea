"""Flights: one load of one chunk -- or one piece, 1/16 of a chunk -- that every concurrent
reader of it waits for (single flight).

A read that finds no flight for a missing key starts one; every other read of that key
waits on it, so a hundred readers of the same missing chunk cause one store lookup and at
most one origin fetch. A failure answers every waiting reader with the error, which
``Flight.result`` turns into the ``OSError`` a player should see. A flight leaves the
table when its load ends, answered either way.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

import trio

from musicfs.cache.planner import piece_key
from musicfs.resources import describe, shortage

ChunkKey = tuple[bytes, int]  # (file version, chunk number or ``piece_key``)


class Flight:
    __slots__ = ("data", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None

    def resolve(self, data: bytes) -> bool:
        """Answer with ``data``, unless already answered; True if this answered it."""
        if self.done.is_set():
            return False
        self.data = data
        self.done.set()
        return True

    async def result(self) -> bytes:
        """The bytes once the flight is done, or the OSError a player should see."""
        await self.done.wait()
        if self.error is not None:
            err = self.error
            if isinstance(err, OSError):
                raise OSError(err.errno, err.strerror or str(err)) from err
            short = shortage(err)
            if short is not None:
                raise short from err
            raise OSError(errno.EIO, f"chunk fetch failed: {describe(err)}") from err
        assert self.data is not None
        return self.data


def fail(flights: Iterable[Flight], exc: BaseException) -> None:
    """Answer every flight not answered yet with ``exc`` (a cancellation as EIO)."""
    error = exc if isinstance(exc, Exception) else OSError(errno.EIO, "cancelled")
    for flight in flights:
        if not flight.done.is_set():
            flight.error = error
            flight.done.set()


class FlightTable:
    """The flights in the air, by key. Touched only from the trio loop: no lock."""

    def __init__(self) -> None:
        self._flights: dict[ChunkKey, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: ChunkKey) -> bool:
        return key in self._flights

    def get(self, key: ChunkKey) -> Flight | None:
        return self._flights.get(key)

    def new(self, key: ChunkKey) -> Flight:
        flight = self._flights[key] = Flight()
        return flight

    def pop(self, key: ChunkKey) -> None:
        self._flights.pop(key, None)

    def end(self, key: ChunkKey, flight: Flight) -> None:
        """``flight``'s load ended: it leaves the table (unless a newer one took its key)."""
        if self._flights.get(key) is flight:
            del self._flights[key]

    def settle(self, version: bytes, pieces: dict[int, Flight]) -> None:
        """A load of these pieces ended: every flight it owned is done, and leaves."""
        for p, flight in pieces.items():
            if not flight.done.is_set():
                flight.error = OSError(errno.EIO, "piece load ended without data")
                flight.done.set()
            self.end((version, piece_key(p)), flight)
