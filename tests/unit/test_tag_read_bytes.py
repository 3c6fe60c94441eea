"""What a tag read asks the origin for (issue 13: the first sync costs a NAS no more than a
bare mutagen loop): on real encoded tracks with an embedded cover, ``OriginFile`` fetches
each byte at most once, little more than the parser reads, and nothing at the far end of a
format whose tags are all at the front."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest
import trio

from musicfs.catalog.tags import Tags, read_tags
from musicfs.demo import write_tags
from musicfs.origin_file import GRANULE, OriginFile, open_buffered
from tests.support.albums import encode

COVER = b"\xff\xd8\xff\xe0" + os.urandom(150 * 1024)  # the bytes of a 1200x1200 JPEG's size
TAGS = Tags(title="Dawn", artist="Aurora", albumartist="Aurora", album="First", track=3)
# Formats whose tags and stream info are all at the front: reading them never needs the
# file's end (Ogg's length is in its last page, an M4A's moov atom is often at the end).
FRONT_ONLY = ("flac",)


def add_cover(path: Path) -> None:
    import mutagen
    from mutagen.flac import Picture
    from mutagen.id3 import APIC
    from mutagen.mp4 import MP4Cover

    audio = mutagen.File(path)
    fmt = path.suffix[1:]
    if fmt == "mp3":
        audio.tags.add(APIC(encoding=3, mime="image/jpeg", type=3, desc="cover", data=COVER))
    elif fmt == "m4a":
        audio.tags["covr"] = [MP4Cover(COVER, imageformat=MP4Cover.FORMAT_JPEG)]
    else:
        picture = Picture()
        picture.type, picture.mime, picture.data = 3, "image/jpeg", COVER
        if fmt == "flac":
            audio.add_picture(picture)
        else:
            audio["metadata_block_picture"] = [base64.b64encode(picture.write()).decode()]
    audio.save()


@pytest.fixture(scope="module")
def tracks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tag-bytes")
    made = {}
    for fmt in ("flac", "mp3", "ogg", "opus", "m4a"):
        path = encode(root / f"t.{fmt}", fmt, 30, 330, 0.3, False)
        write_tags(path, TAGS)
        add_cover(path)
        made[fmt] = path
    return made


class Tracing(io.RawIOBase):
    """A plain file that notes every read its parser makes."""

    def __init__(self, path: Path):
        self.f = path.open("rb")
        self.reads: list[tuple[int, int]] = []

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def,override]
        at = self.f.tell()
        data = self.f.read(len(buffer))
        buffer[: len(data)] = data
        if data:
            self.reads.append((at, len(data)))
        return len(data)


def touched(reads: list[tuple[int, int]]) -> int:
    """Distinct bytes a list of (offset, length) covers."""
    covered: set[int] = set()
    for at, n in reads:
        covered.update(range(at, at + n))
    return len(covered)


def fetched(path: Path) -> tuple[Tags, list[tuple[int, int]]]:
    """The tags of ``path`` read through ``OriginFile`` (as the sync reads a remote file),
    and the (offset, length) of every request it made of the origin."""
    data = path.read_bytes()

    async def read_range(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    def parse() -> tuple[Tags, list[tuple[int, int]]]:
        with open_buffered(read_range, len(data), path.name) as f:
            raw = f.raw
            assert isinstance(raw, OriginFile)
            return read_tags(f, path.name), raw.fetches

    async def main() -> tuple[Tags, list[tuple[int, int]]]:
        return await trio.to_thread.run_sync(parse)

    return trio.run(main)


@pytest.mark.parametrize("fmt", ["flac", "mp3", "ogg", "opus", "m4a"])
def test_a_tag_read_fetches_each_byte_once_and_little_past_what_it_parses(
    tracks: dict[str, Path], fmt: str
) -> None:
    path = tracks[fmt]
    tags, fetches = fetched(path)
    assert (tags.title, tags.artist, tags.track) == ("Dawn", "Aurora", 3)
    asked = sum(n for _, n in fetches)
    assert touched(fetches) == asked, f"a range was fetched twice: {fetches}"
    parser = Tracing(path)
    read_tags(parser, path.name)
    needed = touched(parser.reads)
    assert needed > len(COVER)  # the cover is part of what a tag read reads
    print(fmt, "parser read", needed, "fetched", asked, "in", len(fetches))
    # Requests are widened to a granule (doubling while a parser walks on): what is
    # fetched past the parser's reads is a fraction of them.
    assert asked <= 1.35 * needed + 2 * GRANULE, (needed, fetches)
    assert len(fetches) <= 10, fetches  # a handful of round trips, not one per field


@pytest.mark.parametrize("fmt", FRONT_ONLY)
def test_formats_with_their_tags_in_front_are_never_read_at_the_end(
    tracks: dict[str, Path], fmt: str
) -> None:
    """mutagen.File on its own reads the last 160 bytes of every file (for an APEv2 footer
    that only matters when no format claims the file); the tag read does not."""
    path = tracks[fmt]
    size = path.stat().st_size
    _, fetches = fetched(path)
    head_end = max(at + n for at, n in fetches)
    assert head_end < size // 2, (size, fetches)


def test_an_mp3_is_read_at_its_end_only_when_an_id3v1_tag_could_add_to_it(
    tracks: dict[str, Path], tmp_path: Path
) -> None:
    from mutagen.id3 import ID3, TCON, TDRC

    path = tracks["mp3"]  # its ID3v2 tag has no year and no genre: a v1 tag could add them
    size = path.stat().st_size
    _, fetches = fetched(path)
    tail = [(at, n) for at, n in fetches if at + n == size]
    assert tail and tail[0][1] <= 4096 + 160, fetches  # the tag's 128 bytes, not a chunk
    full = tmp_path / "full.mp3"
    full.write_bytes(path.read_bytes())
    id3 = ID3(full)
    id3.add(TDRC(encoding=3, text="2019"))
    id3.add(TCON(encoding=3, text="Ambient"))
    id3.save()
    tags, fetches = fetched(full)
    assert (tags.year, tags.genre, tags.title) == (2019, "Ambient", "Dawn")
    assert max(at + n for at, n in fetches) < full.stat().st_size // 2, fetches


def test_an_id3v1_tag_still_names_an_mp3_and_fills_in_what_v2_lacks(
    tracks: dict[str, Path], tmp_path: Path
) -> None:
    from mutagen.id3 import ID3

    v1 = b"TAG" + b"V1 Title".ljust(30, b"\0") + b"V1 Artist".ljust(30, b"\0")
    v1 += b"V1 Album".ljust(30, b"\0") + b"1987" + b"".ljust(28, b"\0") + b"\0\x05" + bytes([8])
    assert len(v1) == 128
    only_v1 = tmp_path / "only-v1.mp3"
    raw = tracks["mp3"].read_bytes()
    only_v1.write_bytes(raw)
    ID3(only_v1).delete()
    only_v1.write_bytes(only_v1.read_bytes() + v1)
    tags, _ = fetched(only_v1)
    assert (tags.title, tags.artist, tags.album, tags.year, tags.track) == (
        "V1 Title",
        "V1 Artist",
        "V1 Album",
        1987,
        5,
    )
    both = tmp_path / "both.mp3"
    both.write_bytes(raw + v1)  # v2 has title, artist, album and track; no year, no genre
    tags, _ = fetched(both)
    assert (tags.title, tags.year, tags.genre) == ("Dawn", 1987, "Jazz")


@pytest.mark.parametrize(
    "name", ["tone.flac", "tone.mp3", "tone.ogg", "tone.opus", "tone.m4a", "tone.wav", "tone.aiff"]
)
@pytest.mark.parametrize("renamed", [False, True])
def test_the_format_chosen_is_mutagens_own_choice(name: str, renamed: bool, tmp_path: Path) -> None:
    """Leaving APEv2File out when a format wins outright changes nothing mutagen would pick,
    also for a file whose extension lies (then only its magic bytes speak for it)."""
    import mutagen

    from musicfs.catalog.tags import _parse
    from tests.support.library import FIXTURES

    path = tmp_path / (name + ".audio" if renamed else name)
    path.write_bytes((FIXTURES / name).read_bytes())

    def outcome(parse):  # type: ignore[no-untyped-def]
        try:
            return type(parse()).__name__
        except Exception as exc:  # the same format tried: the same error
            return type(exc).__name__

    with path.open("rb") as f:
        ours = outcome(lambda: _parse(f, path.name))
    assert ours == outcome(lambda: mutagen.File(path))
