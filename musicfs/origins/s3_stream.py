"""One streaming GET of an S3 object, read along the object by the requests queued on it
(``s3_streams.py`` decides which requests queue where).

The body is read strictly forward. The last ``HISTORY`` bytes it delivered are kept, so a
request that overlaps or falls a little behind the previous one (a reader's read-ahead
and its own demand reads cross like that) is still answered from this one GET, and a
request a little ahead (``SKIP``: chunks the cache already had) reads through the gap.
Requests take turns in the order they were queued (tickets), so ranges asked for at once
become one pipelined transfer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from musicfs.origins.base import OriginError

HISTORY = 8 * 1024 * 1024  # bytes a stream keeps after delivering them (two spans)
SKIP = 4 * 1024 * 1024  # a request this far past a stream's last claim still queues on it
PIECE = 1024 * 1024  # a body is read in pieces: a stalled server hits the socket timeout


class Body(Protocol):
    def read(self, n: int) -> bytes: ...

    def close(self) -> None: ...


@dataclass
class Opened:
    """One GET's answer: its body delivers bytes ``[start, end)`` of an object of ``size``
    bytes whose version is ``etag``."""

    body: Body
    start: int
    end: int
    size: int
    etag: str | None


# (bytes read so far, bytes wanted) -> the error for a body that ended early.
ShortRead = Callable[[int, int], OriginError]


def read_exact(body: Body, want: int, short: ShortRead) -> bytes:
    """Exactly ``want`` bytes of ``body``; a body that ends first is an error, never a
    short answer (only the object's end, known from the GET's answer, makes one)."""
    data = bytearray()
    while len(data) < want:
        piece = body.read(min(PIECE, want - len(data)))
        if not piece:
            raise short(len(data), want)
        if not data and len(piece) == want:
            return piece  # one piece: no copy
        data += piece
    return bytes(data)


class Stream:
    """A GET's body and the requests queued on it. Every field is guarded by the owning
    table's lock, except that the body is read (``read_for``) by the one thread whose turn
    it is (``busy``), outside the lock."""

    def __init__(self, key: str, start: int, now: float):
        self.key = key
        self.opened: Opened | None = None  # None until the opening request's GET answers
        self.pos = start  # the body has been read up to here
        self.window = bytearray()  # the last bytes read: [pos - len(window), pos)
        self.claimed_end = start  # the furthest end of the requests queued so far
        self.tickets = 0  # requests queued so far
        self.turn = 0  # the ticket whose turn it is
        self.busy = False
        self.dead = False
        self.last_used = now

    @property
    def window_start(self) -> int:
        return self.pos - len(self.window)

    def distance(self, offset: int) -> int | None:
        """How far ``offset`` is from where this stream will be (0: right there), or None
        if a request there cannot be answered from it."""
        if self.dead or (self.opened is not None and offset >= self.opened.end):
            return None
        if self.window_start <= offset <= self.claimed_end + SKIP:
            return abs(offset - self.claimed_end)
        return None

    def enqueue(self, offset: int, length: int) -> int:
        self.claimed_end = max(self.claimed_end, offset + length)
        self.tickets += 1
        return self.tickets - 1

    def idle(self) -> bool:
        """Open, and no request queued or being served."""
        queued = self.turn < self.tickets
        return not (self.dead or self.opened is None or self.busy or queued)

    def read_for(self, offset: int, length: int, short: ShortRead) -> bytes:
        """The body's bytes from ``pos`` through the end of ``[offset, offset + length)``
        (nothing if the window has them already). Outside the lock, on our turn."""
        opened = self.opened
        assert opened is not None and self.busy
        return read_exact(opened.body, min(opened.end, offset + length) - self.pos, short)

    def commit(self, data: bytes, offset: int, length: int) -> bytes | None:
        """Add ``data`` (from ``read_for``) and answer ``[offset, offset + length)`` (short
        only at the object's end), or None if those bytes already left the window. Under
        the lock."""
        opened = self.opened
        assert opened is not None
        start = self.pos
        self.pos += len(data)
        self.window += data
        target = min(opened.end, offset + length)
        if offset >= target:
            answer: bytes | None = b""
        elif offset == start and len(data) == target - offset:
            answer = data  # the common case: exactly the bytes just read
        elif offset >= self.window_start:
            with memoryview(self.window) as view:
                lo = offset - self.window_start
                answer = bytes(view[lo : lo + target - offset])
        else:
            answer = None
        excess = len(self.window) - HISTORY
        if excess > 0:
            del self.window[:excess]  # cheap: a bytearray drops its front in place
        return answer
