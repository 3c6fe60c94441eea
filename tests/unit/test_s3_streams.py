"""Layer 1: the S3 origin's streaming GETs (musicfs/origins/s3_streams.py, s3_stream.py)
against an object held in memory and served as GETs would be: any interleaving of reads
at any offsets, served in any order, some given up before they start, returns exactly the
object's bytes; an object replaced mid-read never mixes versions; a body that ends early
is an error."""

from __future__ import annotations

import errno
import io
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from musicfs.origins.base import OriginError
from musicfs.origins.s3_stream import HISTORY, Opened
from musicfs.origins.s3_streams import Claim, StreamSettings, StreamTable

KEY = "artist/album/01.flac"
KIB = 1024


class Body(io.BytesIO):
    """A GET's body: the bytes it was asked for, or fewer (``cut``) as a connection that
    dropped would deliver, or an error after ``fail_after`` bytes."""

    def __init__(self, data: bytes, fail_after: int | None = None):
        super().__init__(data)
        self.fail_after = fail_after
        self.closed_by_table = False

    def read(self, n: int | None = -1) -> bytes:
        if self.fail_after is not None and self.tell() + (n or 0) > self.fail_after:
            raise OriginError(errno.ECONNRESET, "connection reset", origin="mem")
        return super().read(n)

    def close(self) -> None:
        self.closed_by_table = True
        super().close()


class MemoryObject:
    """One object answering GETs like S3: ranges, If-Match, its ETag; every GET recorded."""

    def __init__(self, data: bytes):
        self.data = data
        self.etag = '"v1"'
        self.gets: list[tuple[int, int | None, str | None]] = []
        self.bodies: list[Body] = []
        self.cut = 0  # bytes each body falls short by
        self.fail_after: int | None = None
        self.ignore_range = False
        self.lock = threading.Lock()

    def replace(self, data: bytes, etag: str) -> None:
        with self.lock:
            self.data, self.etag = data, etag

    def open_get(
        self, key: str, offset: int, length: int | None, if_match: str | None
    ) -> Opened | None:
        assert key == KEY
        with self.lock:
            self.gets.append((offset, length, if_match))
            if if_match is not None and if_match != self.etag:
                raise OriginError(errno.ESTALE, "precondition failed", origin="mem")
            size = len(self.data)
            if offset >= size:
                return None
            start = 0 if self.ignore_range else offset
            end = size if length is None or self.ignore_range else min(size, offset + length)
            body = Body(self.data[start : end - self.cut], self.fail_after)
            self.bodies.append(body)
            return Opened(body, start, end, size, self.etag)


def table(obj: MemoryObject, **kw: float) -> StreamTable:
    opts = {"streams": 4, "stream_after": 256 * KIB, "stream_idle": 10.0, "timeout": 2.0, **kw}
    return StreamTable("mem", obj.open_get, StreamSettings(**opts))  # type: ignore[arg-type]


def read(t: StreamTable, offset: int, length: int) -> bytes:
    claim = t.claim(KEY, offset, length)
    try:
        return t.serve(claim)
    finally:
        t.settle(claim)


def pattern(size: int) -> bytes:
    """Bytes without a period, so any misplaced range shows."""
    return random.Random(size).randbytes(size)


def test_a_sequential_read_is_one_streaming_get_after_the_first_ranges() -> None:
    data = pattern(8 * 1024 * KIB)
    obj = MemoryObject(data)
    t = table(obj)
    got = b"".join(read(t, off, 128 * KIB) for off in range(0, len(data), 128 * KIB))
    assert got == data
    # Two 128 KiB ranged GETs make the 256 KiB run, then one GET to the end serves the rest.
    assert [(o, n) for o, n, _ in obj.gets] == [
        (0, 128 * KIB),
        (128 * KIB, 128 * KIB),
        (256 * KIB, None),
    ]
    assert t.gets == 3
    # Read to its end, the stream is closed, not kept.
    assert obj.bodies[-1].closed_by_table and t.open_streams() == 0


def test_ranges_asked_for_at_once_queue_on_one_stream_in_order() -> None:
    data = pattern(16 * 1024 * KIB)
    obj = MemoryObject(data)
    t = table(obj)
    assert read(t, 0, 512 * KIB) == data[: 512 * KIB]
    spans = [(off, 1024 * KIB) for off in range(512 * KIB, len(data), 1024 * KIB)]
    claims = [t.claim(KEY, off, n) for off, n in spans]
    # Served in reverse: each waits for its turn, none opens another GET.
    with ThreadPoolExecutor(len(claims)) as pool:
        answers = list(pool.map(t.serve, reversed(claims)))[::-1]
    for claim in claims:
        t.settle(claim)
    assert answers == [data[off : off + n] for off, n in spans]
    assert len(obj.gets) == 2


def test_a_request_behind_the_stream_is_answered_from_its_window() -> None:
    data = pattern(16 * 1024 * KIB)
    obj = MemoryObject(data)
    t = table(obj)
    for off in range(0, 6 * 1024 * KIB, 512 * KIB):
        assert read(t, off, 512 * KIB) == data[off : off + 512 * KIB]
    gets = len(obj.gets)
    assert read(t, 3 * 1024 * KIB, 1024 * KIB) == data[3 * 1024 * KIB : 4 * 1024 * KIB]
    assert read(t, 7 * 1024 * KIB, 1024 * KIB) == data[7 * 1024 * KIB : 8 * 1024 * KIB]  # a gap
    assert len(obj.gets) == gets
    for off in range(8 * 1024 * KIB, 12 * 1024 * KIB, 1024 * KIB):
        assert read(t, off, 1024 * KIB) == data[off : off + 1024 * KIB]
    assert len(obj.gets) == gets
    # Further behind than the window keeps: a ranged GET of its own, still the right bytes.
    far = 12 * 1024 * KIB - HISTORY - 64 * KIB
    assert far >= 0 and read(t, far, 64 * KIB) == data[far : far + 64 * KIB]
    assert len(obj.gets) == gets + 1


def test_a_body_that_ends_early_is_an_error_not_a_short_read() -> None:
    data = pattern(2 * 1024 * KIB)
    obj = MemoryObject(data)
    obj.cut = 1000
    t = table(obj)
    with pytest.raises(OriginError) as info:
        read(t, 0, 128 * KIB)
    assert info.value.errno == errno.EIO and "ended the body" in str(info.value)
    t = table(obj)  # the stream's GET too: the read reaching its cut fails
    obj.cut = 0
    for off in (0, 128 * KIB):
        read(t, off, 128 * KIB)
    obj.cut = 1000
    with pytest.raises(OriginError) as info:
        for off in range(256 * KIB, len(data), 128 * KIB):
            assert read(t, off, 128 * KIB) == data[off : off + 128 * KIB]
    assert off == len(data) - 128 * KIB and obj.gets[-1] == (256 * KIB, None, '"v1"')
    # Only the object's real end makes a read short.
    obj.cut = 0
    assert read(t, len(data) - 10, 100) == data[-10:]
    assert read(t, len(data), 100) == b""


def test_an_answer_for_other_bytes_than_asked_is_refused() -> None:
    obj = MemoryObject(pattern(1024 * KIB))
    obj.ignore_range = True  # a server that answers 200 with the whole object
    with pytest.raises(OriginError) as info:
        read(table(obj), 4096, 100)
    assert info.value.errno == errno.EIO and "the server answered 0-" in str(info.value)


def test_an_error_mid_stream_fails_that_read_and_the_next_opens_a_new_get() -> None:
    data = pattern(4 * 1024 * KIB)
    obj = MemoryObject(data)
    t = table(obj)
    read(t, 0, 256 * KIB)
    obj.fail_after = 300 * KIB  # the stream's body (from 256 KiB) breaks 300 KiB in
    assert read(t, 256 * KIB, 256 * KIB) == data[256 * KIB : 512 * KIB]
    with pytest.raises(OriginError) as info:
        read(t, 512 * KIB, 256 * KIB)
    assert info.value.errno == errno.ECONNRESET
    assert obj.bodies[-1].closed_by_table and t.open_streams() == 0
    obj.fail_after = None
    assert read(t, 512 * KIB, 256 * KIB) == data[512 * KIB : 768 * KIB]


def test_a_replaced_object_never_mixes_versions() -> None:
    old, new = pattern(4 * 1024 * KIB), bytes(4 * 1024 * KIB)
    obj = MemoryObject(old)
    t = table(obj, streams=0)  # every read its own GET: each must match the first's ETag
    assert read(t, 0, 1000) == old[:1000]
    obj.replace(new, '"v2"')
    with pytest.raises(OriginError) as info:
        read(t, 1000, 1000)
    assert info.value.errno == errno.ESTALE
    assert obj.gets[-1][2] == '"v1"'  # asked with If-Match
    # A listing saw the new version: reads of it begin afresh.
    t.saw_version(KEY, "v2")
    assert read(t, 1000, 1000) == new[1000:2000]


def test_streams_are_bounded_and_idle_ones_close() -> None:
    now = [0.0]
    objs = {f"k{i}": MemoryObject(pattern(4 * 1024 * KIB)) for i in range(3)}

    def open_get(key: str, offset: int, length: int | None, etag: str | None) -> Opened | None:
        return objs[key].open_get(KEY, offset, length, etag)

    t = StreamTable(
        "mem", open_get, StreamSettings(streams=2, stream_after=0, stream_idle=5.0), lambda: now[0]
    )
    for key in objs:
        for off in (0, 64 * KIB):
            claim = t.claim(key, off, 64 * KIB)
            assert t.serve(claim) == objs[key].data[off : off + 64 * KIB]
            t.settle(claim)
        now[0] += 1
    assert t.open_streams() == 2  # the least recently used was closed for the third
    assert objs["k0"].bodies[-1].closed_by_table
    now[0] += 10
    t.sweep()
    assert t.open_streams() == 0
    assert all(o.bodies[-1].closed_by_table for o in objs.values())


def test_a_request_given_up_before_it_started_sends_those_behind_it_elsewhere() -> None:
    data = pattern(8 * 1024 * KIB)
    obj = MemoryObject(data)
    t = table(obj)
    for off in (0, 256 * KIB):
        read(t, off, 256 * KIB)
    first = t.claim(KEY, 512 * KIB, 256 * KIB)
    second = t.claim(KEY, 768 * KIB, 256 * KIB)
    assert first.stream is not None and second.stream is first.stream
    t.settle(first)  # cancelled before its thread ran: its bytes would be missing
    assert t.serve(first) == b""  # a thread started late does nothing
    assert t.serve(second) == data[768 * KIB : 1024 * KIB]
    t.settle(second)


def test_a_read_behind_a_stalled_one_gives_up_the_stream_for_its_own_get() -> None:
    data = pattern(8 * 1024 * KIB)
    obj = MemoryObject(data)
    t = table(obj, timeout=0.2)
    for off in (0, 256 * KIB):
        read(t, off, 256 * KIB)
    stuck = t.claim(KEY, 512 * KIB, 256 * KIB)  # its thread never gets to run
    behind = t.claim(KEY, 768 * KIB, 256 * KIB)
    assert behind.stream is stuck.stream is not None
    started = time.monotonic()
    assert t.serve(behind) == data[768 * KIB : 1024 * KIB]
    assert 0.2 <= time.monotonic() - started < 2.0  # waited its timeout, no longer
    assert obj.gets[-1] == (768 * KIB, 256 * KIB, obj.etag)  # a ranged GET of its own
    t.settle(behind)
    # Its thread, late, still gets its bytes (the stream is gone: from a GET of its own).
    assert t.serve(stuck) == data[512 * KIB : 768 * KIB]
    t.settle(stuck)
    assert read(t, 1024 * KIB, 256 * KIB) == data[1024 * KIB : 1280 * KIB]


# -- the property ----------------------------------------------------------------------

SIZE = 3 * 1024 * KIB + 777
DATA = pattern(SIZE)


@st.composite
def batches(draw: st.DrawFn) -> list[list[tuple[int, int, str]]]:
    """Rounds of reads claimed in order; each round served at once in threads, in a drawn
    order, some given up before they start. Offsets mostly follow on, sometimes jump."""
    rounds = []
    pos = 0
    for _ in range(draw(st.integers(1, 8))):
        batch = []
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["next", "next", "next", "back", "jump", "past-end"]))
            length = draw(st.sampled_from([1, 4096, 128 * KIB, 512 * KIB, 1024 * KIB + 3]))
            if kind == "back":
                pos = max(0, pos - draw(st.integers(0, 2 * 1024 * KIB)))
            elif kind == "jump":
                pos = draw(st.integers(0, SIZE))
            elif kind == "past-end":
                pos = SIZE + draw(st.integers(-5, 5))
            fate = draw(st.sampled_from(["serve", "serve", "serve", "give up"]))
            batch.append((max(0, pos), length, fate))
            pos = max(0, pos) + length
        rounds.append(draw(st.permutations(batch)) if len(batch) > 1 else batch)
    return rounds


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=batches(), streams=st.integers(0, 3), after=st.sampled_from([0, 1, 256 * KIB]))
def test_any_interleaving_of_reads_returns_exactly_the_objects_bytes(
    rounds: list[list[tuple[int, int, str]]], streams: int, after: int
) -> None:
    data = DATA
    obj = MemoryObject(data)
    t = table(obj, streams=streams, stream_after=after)
    for batch in rounds:
        # Claimed in the drawn order (the order the caller asked), served all at once.
        claims: list[tuple[Claim, str]] = [(t.claim(KEY, o, n), fate) for o, n, fate in batch]
        for claim, fate in claims:
            if fate == "give up":
                t.settle(claim)
        with ThreadPoolExecutor(len(claims)) as pool:
            answers = list(pool.map(lambda c: t.serve(c[0]), claims))
        for (claim, fate), answer in zip(claims, answers, strict=True):
            t.settle(claim)
            if fate == "serve":
                assert answer == data[claim.offset : claim.offset + claim.length]
            else:
                assert answer == b""
    assert t.open_streams() <= streams
    t.close_all()
    assert t.open_streams() == 0
    assert all(body.closed_by_table for body in obj.bodies)
