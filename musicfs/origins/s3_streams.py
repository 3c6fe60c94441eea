"""Which GET answers each read of an S3 object: its own ranged GET, or a streaming GET kept
open along the object (``s3_stream.py``).

A reader streaming a track asks for one range after another. Answering each with its own
ranged GET costs a request each time (a round trip; on moto a copy of the whole object per
request). Instead, once a run of nearby requests on one key has asked for ``stream_after``
bytes, the next request opens *one* GET from its offset to the object's end, and the
requests that follow near it are answered from that body:

* requests are *claimed* in the order the caller issues them (``claim``: on the trio
  thread, cheap, never blocks) and *served* in worker threads (``serve``), each in its
  turn on the stream it queued on;
* at most ``streams`` bodies are open at once: a new one closes the key's idle ones (a
  seek) or else the least recently used idle one; one unused for ``stream_idle`` goes;
* a stream that fails or times out, or whose request was given up before its thread
  started (the caller was cancelled: its bytes would be missing), is closed; requests
  queued behind it fall back to a ranged GET of their own, so an error costs a retry,
  never wrong bytes;
* every GET of a key after the first carries ``If-Match`` with the first one's ETag (kept
  while the key is being read, forgotten after ``stream_idle`` or when a listing or stat
  sees another ETag): an object replaced mid-read fails the read (ESTALE) instead of
  mixing two versions' bytes;
* an answer for other bytes than asked (a server ignoring the range) or a body that ends
  early is an error: only the object's end makes a read short.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from musicfs.origins.base import OriginError
from musicfs.origins.s3_stream import SKIP, Opened, ShortRead, Stream, read_exact

# (key, offset, length or None for "to the end", If-Match ETag or None) -> the answer, or
# None when ``offset`` is at or past the object's end.
OpenGet = Callable[[str, int, int | None, str | None], Opened | None]


@dataclass(frozen=True)
class StreamSettings:
    streams: int = 4  # bodies open at once; 0: every request is its own ranged GET
    stream_after: int = 1024 * 1024  # bytes a run asks for before a stream opens
    stream_idle: float = 10.0  # seconds an unused stream (and a key's ETag) is kept
    timeout: float = 5.0  # longest wait for a turn on a stream


@dataclass(eq=False)
class _Key:
    """One key being read: its run of nearby requests, the ETag its GETs must match, and
    its open streams."""

    stream_after: int
    last_used: float = 0.0
    run_start: int = 0
    run_end: int = 0
    run_bytes: int = 0
    etag: str | None = None
    streams: list[Stream] = field(default_factory=list)

    def note(self, offset: int, length: int) -> int | None:
        """Add a request to the run it continues (or start one). If it is at the run's
        front (not behind it by more than ``SKIP``) and the run had asked for
        ``stream_after`` bytes before it, where a stream for it should start: at the
        run's end if it is a little past that (the range between is likely being asked
        for at the same moment, its claim not in yet), else at the request."""
        start: int | None = None
        if self.run_start - SKIP <= offset <= self.run_end + SKIP:
            if offset >= self.run_end - SKIP and self.run_bytes >= self.stream_after:
                start = self.run_end if offset > self.run_end else offset
            self.run_start = min(self.run_start, offset)
            self.run_end = max(self.run_end, offset + length)
            self.run_bytes += length
        else:
            if self.stream_after <= 0:
                start = offset
            self.run_start, self.run_end, self.run_bytes = offset, offset + length, length
        return start


@dataclass(eq=False)
class Claim:
    key: str
    offset: int
    length: int
    stream: Stream | None = None  # answered from this stream (None: a ranged GET)
    opens: bool = False  # this request opens ``stream``'s GET
    ticket: int = 0  # its turn on ``stream``
    started: bool = False
    abandoned: bool = False
    to_close: list[Stream] = field(default_factory=list)  # closed by its thread


class StreamTable:
    def __init__(
        self,
        origin: str,
        open_get: OpenGet,
        settings: StreamSettings,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.origin = origin
        self.open_get = open_get
        self.settings = settings
        self.clock = clock
        self._cond = threading.Condition()
        self._keys: dict[str, _Key] = {}
        self._swept = clock()
        self.gets = 0  # GET requests sent (ranged and streaming)

    # -- claiming (the caller's thread, in request order) ------------------------------

    def claim(self, key: str, offset: int, length: int) -> Claim:
        with self._cond:
            now = self.clock()
            # Swept now and then, not per read: a scanner leaves thousands of keys here.
            due = now - self._swept >= min(1.0, self.settings.stream_idle)
            claim = Claim(key, offset, length, to_close=self._sweep(now) if due else [])
            state = self._keys.setdefault(key, _Key(self.settings.stream_after))
            state.last_used = now
            start = state.note(offset, length)
            near = [(d, s) for s in state.streams if (d := s.distance(offset)) is not None]
            if near:
                claim.stream = min(near, key=lambda pair: pair[0])[1]
            elif start is not None and self._room(state, claim.to_close):
                claim.stream, claim.opens = Stream(key, start, now), True
                state.streams.append(claim.stream)
            if claim.stream is not None:
                claim.ticket = claim.stream.enqueue(offset, length)
            return claim

    def _room(self, state: _Key, to_close: list[Stream]) -> bool:
        """Whether a new stream may open for ``state``'s key, closing what it replaces: the
        key's idle streams (a seek: they serve nobody now), else the least recently used
        idle stream when ``streams`` are open."""
        if self.settings.streams <= 0:
            return False
        for old in list(state.streams):
            if old.idle():
                self._kill(old, to_close)
        if self._open_count() < self.settings.streams:
            return True
        idle = [x for s in self._keys.values() for x in s.streams if x.idle()]
        if not idle:
            return False
        self._kill(min(idle, key=lambda x: x.last_used), to_close)
        return True

    def settle(self, claim: Claim) -> None:
        """After ``serve`` returned, raised or was given up on: a claim whose thread never
        started leaves a hole in its stream's turns, so the stream is closed (those queued
        behind it fall back to ranged GETs)."""
        with self._cond:
            if claim.started:
                return
            claim.abandoned = True
            if claim.stream is not None:
                self._kill(claim.stream, claim.to_close)
            to_close, claim.to_close = claim.to_close, []
        _close(to_close)

    # -- serving (worker threads) ------------------------------------------------------

    def serve(self, claim: Claim) -> bytes:
        with self._cond:
            if claim.abandoned:
                return b""
            claim.started = True
            to_close, claim.to_close = claim.to_close, []
        _close(to_close)
        stream = claim.stream
        if stream is not None and self._take_turn(claim, stream):
            answer = self._from_stream(claim, stream)
            if answer is not None:
                return answer
        return self._ranged(claim.key, claim.offset, claim.length)

    def _take_turn(self, claim: Claim, stream: Stream) -> bool:
        """Wait for ``claim``'s turn on ``stream`` (opening its GET if it is the first);
        False if the stream died or stalled first."""
        if claim.opens:
            try:
                opened = self._open(claim.key, stream.pos, None)
            except BaseException:
                with self._cond:
                    self._kill(stream, [])
                raise
            with self._cond:
                if opened is None:  # at or past the end: the ranged GET says so
                    self._kill(stream, [])
                    return False
                stream.opened = opened
                dropped = stream.dead  # killed while opening: nobody else will close it
            if dropped:
                opened.body.close()
                return False
        to_close: list[Stream] = []
        with self._cond:
            ready = self._cond.wait_for(
                lambda: stream.dead or (stream.opened is not None and stream.turn == claim.ticket),
                timeout=self.settings.timeout,
            )
            if not ready:  # the requests before this one stalled
                self._kill(stream, to_close)
            mine = ready and not stream.dead
            stream.busy = stream.busy or mine
        _close(to_close)
        return mine

    def _from_stream(self, claim: Claim, stream: Stream) -> bytes | None:
        """``claim``'s bytes from ``stream`` on its turn (None: they left the window)."""
        short = self._short(claim.key, stream.pos)
        try:
            data = stream.read_for(claim.offset, claim.length, short)
        except BaseException:
            with self._cond:
                self._kill(stream, [])
            _close([stream])
            raise
        with self._cond:
            answer = stream.commit(data, claim.offset, claim.length)
            stream.turn += 1
            stream.busy = False
            stream.last_used = self.clock()
            assert stream.opened is not None
            # At its end it still answers the requests queued on it, from its window.
            finished = stream.dead or (stream.pos >= stream.opened.end and stream.idle())
            if finished:
                self._kill(stream, [])
            self._cond.notify_all()
        if finished:  # at its end, or killed while this thread read it: ours to close
            _close([stream])
        return answer

    def _ranged(self, key: str, offset: int, length: int) -> bytes:
        opened = self._open(key, offset, length)
        if opened is None:
            return b""
        try:
            return read_exact(opened.body, opened.end - offset, self._short(key, offset))
        finally:
            opened.body.close()

    def _open(self, key: str, offset: int, length: int | None) -> Opened | None:
        with self._cond:
            state = self._keys.get(key)
            etag = state.etag if state is not None else None
            self.gets += 1
        opened = self.open_get(key, offset, length, etag)
        if opened is None:
            return None
        end = opened.size if length is None else min(opened.size, offset + length)
        if (opened.start, opened.end) != (offset, end):
            # A server that ignored the range (or cut it short) must not be read as if
            # it had answered it.
            opened.body.close()
            raise OriginError(
                errno.EIO,
                f"asked for bytes {offset}-{end} of {opened.size}, the server answered "
                f"{opened.start}-{opened.end}",
                origin=self.origin,
            )
        with self._cond:
            state = self._keys.setdefault(key, _Key(self.settings.stream_after, self.clock()))
            if state.etag is None:
                state.etag = opened.etag
            elif _bare(opened.etag) != _bare(state.etag):
                opened.body.close()
                raise self.changed(f"ETag {opened.etag}, was {state.etag}")
        return opened

    # -- versions ----------------------------------------------------------------------

    def changed(self, detail: str, path: str | None = None) -> OriginError:
        # ESTALE: this file's problem (the catalog is behind), not the origin's health.
        return OriginError(
            errno.ESTALE,
            f"object changed during the read ({detail}): not mixing two versions",
            origin=self.origin,
            path=path,
        )

    def saw_version(self, key: str, etag: str | None) -> None:
        """A listing or stat saw ``key`` at ``etag``: if it is being read at another
        version, its pin and streams go (the catalog is moving to the new one)."""
        with self._cond:
            state = self._keys.get(key)
            if state is None or state.etag is None or _bare(state.etag) == _bare(etag):
                return
            to_close: list[Stream] = []
            for stream in list(state.streams):
                self._kill(stream, to_close)
            del self._keys[key]
        _close(to_close)

    # -- housekeeping ------------------------------------------------------------------

    def sweep(self) -> None:
        """Close streams idle for ``stream_idle`` and forget keys unused as long."""
        with self._cond:
            to_close = self._sweep(self.clock())
        _close(to_close)

    def close_all(self) -> None:
        to_close: list[Stream] = []
        with self._cond:
            for state in self._keys.values():
                for stream in list(state.streams):
                    self._kill(stream, to_close)
            self._keys.clear()
        _close(to_close)

    def open_streams(self) -> int:
        with self._cond:
            return self._open_count()

    def _open_count(self) -> int:
        return sum(len(s.streams) for s in self._keys.values())

    def _sweep(self, now: float) -> list[Stream]:
        self._swept = now
        to_close: list[Stream] = []
        idle = self.settings.stream_idle
        for key, state in list(self._keys.items()):
            for stream in list(state.streams):
                if stream.idle() and now - stream.last_used > idle:
                    self._kill(stream, to_close)
            if not state.streams and now - state.last_used > idle:
                del self._keys[key]
        return to_close

    def _kill(self, stream: Stream, to_close: list[Stream]) -> None:
        """Mark ``stream`` dead and unlist it (under the lock). Its body goes on
        ``to_close`` unless a thread is reading it (that thread closes it)."""
        stream.dead = True
        state = self._keys.get(stream.key)
        if state is not None and stream in state.streams:
            state.streams.remove(stream)
        if not stream.busy and stream.opened is not None:
            to_close.append(stream)
        self._cond.notify_all()

    def _short(self, key: str, offset: int) -> ShortRead:
        def error(got: int, want: int) -> OriginError:
            return OriginError(
                errno.EIO,
                f"the server ended the body after {got} of the {want} bytes at {offset}",
                origin=self.origin,
            )

        return error


def _close(streams: list[Stream]) -> None:
    for stream in streams:
        if stream.opened is not None:
            stream.opened.body.close()


def _bare(etag: str | None) -> str:
    return (etag or "").strip('"')
