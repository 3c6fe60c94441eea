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
    assert got.title is None and got.album is None and got.duration


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
