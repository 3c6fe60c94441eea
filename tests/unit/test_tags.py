from pathlib import Path

import pytest

from musicfs.catalog.tags import TagError, Tags, is_audio_path, read_tags
from musicfs.demo import FORMATS
from tests.support.library import tagged_file

FULL = Tags(
    title="Tïtle ☃",
    artist="Artist",
    albumartist="Album Artist",
    album="Album",
    track=7,
    disc=2,
    disctotal=3,
    year=1999,
    genre="Jazz",
    compilation=True,
)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips_all_tags(tmp_path: Path, fmt: str) -> None:
    path = tagged_file(tmp_path / f"t.{fmt}", fmt, FULL)
    with path.open("rb") as f:
        got = read_tags(f, path.name)
    assert got.duration and got.duration > 0.4
    assert got.as_dict() | {"duration": None} == FULL.as_dict()


@pytest.mark.parametrize("fmt", FORMATS)
def test_untagged_files_parse_with_empty_tags(tmp_path: Path, fmt: str) -> None:
    from tests.support.library import FIXTURES

    with (FIXTURES / f"tone.{fmt}").open("rb") as f:
        got = read_tags(f, f"tone.{fmt}")
    # Only the file name to go by (see test_files_without_tags_are_named_from_their_path).
    assert got.title == "tone" and got.album is None and got.artist is None and got.duration


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"fLaC" + b"\xff" * 50, b"ID3\x04"])
def test_broken_files_raise_tag_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.flac"
    path.write_bytes(content)
    with path.open("rb") as f, pytest.raises(TagError):
        read_tags(f, path.name)


def test_track_and_year_variants_are_normalised(tmp_path: Path) -> None:
    import mutagen

    path = tagged_file(tmp_path / "t.flac", "flac", Tags())
    audio = mutagen.File(path)
    audio["tracknumber"] = ["03/12"]
    audio["date"] = ["2004-05-06"]
    audio["DISCNUMBER"] = ["1/2"]
    audio.save()
    with path.open("rb") as f:
        got = read_tags(f, path.name)
    assert (got.track, got.year, got.disc, got.disctotal) == (3, 2004, 1, 2)


def test_audio_extensions() -> None:
    assert is_audio_path("a/b/c.FLAC")
    assert is_audio_path("x.opus")
    assert not is_audio_path("cover.jpg")
    assert not is_audio_path("flac")
    assert not is_audio_path("dir.mp3/readme")


def _chunk(cid: bytes, data: bytes, *, big_endian: bool = False) -> bytes:
    size = len(data).to_bytes(4, "big" if big_endian else "little")
    return cid + size + data + (b"\x00" if len(data) % 2 else b"")


def _with_chunk(container: bytes, chunk: bytes, *, big_endian: bool = False) -> bytes:
    body = container[8:] + chunk
    return container[:4] + len(body).to_bytes(4, "big" if big_endian else "little") + body


def test_wav_riff_info_tags_are_read(tmp_path: Path) -> None:
    from tests.support.library import FIXTURES

    info = b"INFO" + b"".join(
        _chunk(cid, text + b"\x00")
        for cid, text in [
            (b"IART", b"Big Band"),
            (b"INAM", b"Big WAV"),
            (b"IPRD", b"Big"),
            (b"ICRD", b"2011-04-01"),
            (b"IGNR", b"Caf\xe9 Jazz"),  # Windows-1252, as older tools write it
            (b"ITRK", b"4"),
        ]
    )
    path = tmp_path / "01 - Big WAV 24MB.wav"
    path.write_bytes(_with_chunk((FIXTURES / "tone.wav").read_bytes(), _chunk(b"LIST", info)))
    with path.open("rb") as f:
        got = read_tags(f, f"Big/{path.name}")
    assert (got.artist, got.title, got.album, got.year, got.genre, got.track) == (
        "Big Band",
        "Big WAV",
        "Big",
        2011,
        "Café Jazz",
        4,
    )


def test_id3_in_wav_wins_over_riff_info(tmp_path: Path) -> None:
    path = tagged_file(tmp_path / "t.wav", "wav", Tags(title="From ID3", artist="ID3 Artist"))
    info = b"INFO" + _chunk(b"INAM", b"From INFO\x00") + _chunk(b"IPRD", b"INFO Album\x00")
    path.write_bytes(_with_chunk(path.read_bytes(), _chunk(b"LIST", info)))
    with path.open("rb") as f:
        got = read_tags(f, path.name)
    assert (got.title, got.artist, got.album) == ("From ID3", "ID3 Artist", "INFO Album")


def test_aiff_name_and_author_chunks_are_read(tmp_path: Path) -> None:
    from tests.support.library import FIXTURES

    raw = (FIXTURES / "tone.aiff").read_bytes()
    raw = _with_chunk(raw, _chunk(b"NAME", b"Aiff Title", big_endian=True), big_endian=True)
    raw = _with_chunk(raw, _chunk(b"AUTH", b"Aiff Author", big_endian=True), big_endian=True)
    path = tmp_path / "t.aiff"
    path.write_bytes(raw)
    with path.open("rb") as f:
        got = read_tags(f, path.name)
    assert (got.title, got.artist) == ("Aiff Title", "Aiff Author")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("Artist/Album/03 Title.flac", ("Artist", "Album", None, 3, None, "Title")),
        ("Music/Artist/Album (1999)/03 - Title.flac", ("Artist", "Album", 1999, 3, None, "Title")),
        ("A/B/2-07. Song.flac", ("A", "B", None, 7, 2, "Song")),
        ("B/Song.flac", (None, "B", None, None, None, "Song")),
        ("Song.flac", (None, None, None, None, None, "Song")),
    ],
)
def test_files_without_tags_are_named_from_their_path(
    tmp_path: Path, path: str, expected: tuple[object, ...]
) -> None:
    from tests.support.library import FIXTURES

    with (FIXTURES / "tone.flac").open("rb") as f:
        got = read_tags(f, path)
    assert (got.artist, got.album, got.year, got.track, got.disc, got.title) == expected


def test_a_file_with_some_tags_is_not_named_from_its_path(tmp_path: Path) -> None:
    path = tagged_file(tmp_path / "t.flac", "flac", Tags(title="Tagged"))
    with path.open("rb") as f:
        got = read_tags(f, "Artist/Album/05 Other.flac")
    assert (got.title, got.artist, got.album, got.track) == ("Tagged", None, None, None)
