"""Layer 3: sequential reads over S3 are served from one streaming GET (the GETs counted in
moto's access log), against moto's S3 server in a network namespace; an object replaced
mid-read fails the read instead of mixing versions."""

from __future__ import annotations

import errno
import io
import random
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trio

from musicfs.config import OriginSettings, OriginTimeouts
from musicfs.origins.base import OriginError
from musicfs.origins.open import open_origin
from musicfs.origins.s3 import S3Origin
from tests.support.netns import S3Server

pytestmark = pytest.mark.network

MIB = 1024 * 1024
KEY = "music/artist/album/01.flac"
PATH = "artist/album/01.flac"
DATA = random.Random(13).randbytes(12 * MIB + 12345)


@pytest.fixture
def bucket(s3: S3Server, world_dir: Path) -> str:
    lib = world_dir / "lib"
    (lib / "music" / "artist" / "album").mkdir(parents=True)
    (lib / "music" / "artist" / "album" / "01.flac").write_bytes(DATA)
    s3.upload_tree("music", lib)
    return "music"


def origin(s3: S3Server, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> S3Origin:
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    url = "s3://music/music"
    settings = replace(OriginSettings(url=url, name="bucket", endpoint=s3.endpoint), **kw)
    o = open_origin(url, "bucket", settings, OriginTimeouts(operation=5.0))
    assert isinstance(o, S3Origin)
    return o


def gets(s3: S3Server) -> int:
    """GETs of the object so far, from moto's access log (its lines may be coloured)."""
    needle = f"GET /music/{quote(KEY)} HTTP"
    with s3.log.open(errors="replace") as f:
        return sum(1 for line in f if needle in line)


async def read_as_a_player_streams(o: S3Origin) -> bytes:
    """As the cache reader fetches a track: the first MiB in 512 KiB reads, then 2 MiB
    spans, two at a time."""
    out = bytearray(len(DATA))
    pos = 0
    while pos < MIB:
        data = await o.read(PATH, pos, 512 * 1024)
        out[pos : pos + len(data)] = data
        pos += 512 * 1024

    async def span(offset: int) -> None:
        data = await o.read(PATH, offset, 2 * MIB)
        out[offset : offset + len(data)] = data

    while pos < len(DATA):
        async with trio.open_nursery() as nursery:
            for offset in (pos, pos + 2 * MIB):
                if offset < len(DATA):
                    nursery.start_soon(span, offset)
        pos += 4 * MIB
    return bytes(out)


def test_a_sequential_read_is_one_streaming_get(
    s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    streamed = origin(s3, monkeypatch)
    before = gets(s3)
    assert trio.run(read_as_a_player_streams, streamed) == DATA
    # Two 512 KiB ranged GETs make the 1 MiB run, then one GET to the end serves the rest.
    assert gets(s3) - before == 3, s3.log.read_text(errors="replace")[-3000:]
    assert streamed._streams.open_streams() == 0  # read to its end: closed
    # The ranged GETs of before (streams = 0): one per read, the same bytes.
    ranged = origin(s3, monkeypatch, streams=0)
    before = gets(s3)
    assert trio.run(read_as_a_player_streams, ranged) == DATA
    assert gets(s3) - before == 2 + 6


def test_a_stream_given_up_mid_read_is_closed_and_reads_go_on(
    s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    o = origin(s3, monkeypatch)

    async def main() -> None:
        for pos in (0, 512 * 1024, MIB):
            assert await o.read(PATH, pos, 512 * 1024) == DATA[pos : pos + 512 * 1024]
        assert o._streams.open_streams() == 1
        # A seek far ahead: a new stream; the old one, idle, is closed.
        far = 9 * MIB
        for pos in range(far - 2 * MIB, far, 512 * 1024):
            assert await o.read(PATH, pos, 512 * 1024) == DATA[pos : pos + 512 * 1024]
        assert o._streams.open_streams() == 1
        # A read cancelled mid-flight: the next ones still get exactly the object's bytes.
        with trio.move_on_after(0.0005):
            await o.read(PATH, far, 2 * MIB)
        for pos in range(far, len(DATA), MIB):
            assert await o.read(PATH, pos, MIB) == DATA[pos : pos + MIB]
        await o.aclose()
        assert o._streams.open_streams() == 0

    trio.run(main)


def test_an_object_replaced_mid_read_never_mixes_versions(
    s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    o = origin(s3, monkeypatch)
    new = bytes(len(DATA))

    async def main() -> None:
        for pos in (0, 512 * 1024):
            assert await o.read(PATH, pos, 512 * 1024) == DATA[pos : pos + 512 * 1024]
        s3.client().put_object("music", KEY, io.BytesIO(new), len(new))
        # The next GET carries If-Match with the first one's ETag: refused, not new bytes.
        with pytest.raises(OriginError) as info:
            await o.read(PATH, MIB, 512 * 1024)
        assert info.value.errno == errno.ESTALE and info.value.path == PATH
        assert "not mixing" in str(info.value)
        # Once a stat (or listing) sees the new version, reads of it begin afresh.
        await o.stat(PATH)
        assert await o.read(PATH, MIB, 512 * 1024) == new[MIB : MIB + 512 * 1024]

    trio.run(main)
