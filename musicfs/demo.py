"""A small, real, tagged demo library built from the audio fixtures in ``tests/fixtures``.

Also the one place that *writes* tags (tests use it to make tagged files of every format).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import mutagen
from mutagen.id3 import ID3, TALB, TCMP, TCON, TDRC, TIT2, TPE1, TPE2, TPOS, TRCK
from mutagen.mp4 import MP4

from musicfs.catalog.tags import Tags

FORMATS = ("flac", "mp3", "ogg", "opus", "m4a", "wav", "aiff")

# This package's folder (site-packages/musicfs when installed).
_PACKAGE_DIR = Path(__file__).resolve().parent


def fixtures_dir() -> Path:
    """Where the demo's audio fixtures are: ``MUSICFS_FIXTURES``, else next to a source
    checkout (``tests/fixtures``), else where an installation put them (the wheel's data
    files, ``<prefix>/share/musicfs/fixtures``)."""
    env = os.environ.get("MUSICFS_FIXTURES")
    if env:
        return Path(env)
    candidates = [_PACKAGE_DIR.parent / "tests" / "fixtures"]
    # <prefix>/lib/pythonX.Y/site-packages/musicfs: pip's prefix is sys.prefix, but Nix
    # installs into the package's own $out while sys.prefix is the interpreter's.
    site_packages = _PACKAGE_DIR.parent
    if len(site_packages.parents) > 2 and site_packages.parents[1].name == "lib":
        candidates.append(site_packages.parents[2] / "share" / "musicfs" / "fixtures")
    candidates.append(Path(sys.prefix) / "share" / "musicfs" / "fixtures")
    for candidate in candidates:
        if (candidate / "tone.flac").exists():
            return candidate
    raise FileNotFoundError(
        "demo audio fixtures not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); set MUSICFS_FIXTURES to the folder holding tone.flac, tone.mp3, ..."
    )


def write_tags(path: Path, tags: Tags) -> None:
    """Write ``tags`` into ``path`` in that format's own tag system."""
    ext = path.suffix.lower()
    if ext in (".mp3", ".wav", ".aiff", ".aif"):
        audio = mutagen.File(path)
        if audio.tags is None:
            audio.add_tags()
        id3: ID3 = audio.tags
        frames: list[tuple[Any, str | None]] = [
            (TIT2, tags.title),
            (TPE1, tags.artist),
            (TPE2, tags.albumartist),
            (TALB, tags.album),
            (TCON, tags.genre),
            (TDRC, str(tags.year) if tags.year else None),
            (TRCK, str(tags.track) if tags.track else None),
            (
                TPOS,
                f"{tags.disc}/{tags.disctotal}"
                if tags.disc and tags.disctotal
                else (str(tags.disc) if tags.disc else None),
            ),
            (TCMP, "1" if tags.compilation else None),
        ]
        for frame, value in frames:
            if value is not None:
                id3.add(frame(encoding=3, text=[value]))
        audio.save()
    elif ext in (".m4a", ".mp4"):
        mp4 = MP4(path)
        if mp4.tags is None:
            mp4.add_tags()
        t: Any = mp4.tags
        for key, value in (
            ("\xa9nam", tags.title),
            ("\xa9ART", tags.artist),
            ("aART", tags.albumartist),
            ("\xa9alb", tags.album),
            ("\xa9gen", tags.genre),
            ("\xa9day", str(tags.year) if tags.year else None),
        ):
            if value is not None:
                t[key] = [value]
        if tags.track:
            t["trkn"] = [(tags.track, 0)]
        if tags.disc:
            t["disk"] = [(tags.disc, tags.disctotal or 0)]
        if tags.compilation:
            t["cpil"] = True
        mp4.save()
    else:  # Vorbis comments: FLAC, Ogg Vorbis, Opus
        audio = mutagen.File(path)
        if audio.tags is None:
            audio.add_tags()
        for key, value in (
            ("title", tags.title),
            ("artist", tags.artist),
            ("albumartist", tags.albumartist),
            ("album", tags.album),
            ("genre", tags.genre),
            ("date", str(tags.year) if tags.year else None),
            ("tracknumber", str(tags.track) if tags.track else None),
            ("discnumber", str(tags.disc) if tags.disc else None),
            ("disctotal", str(tags.disctotal) if tags.disctotal else None),
            ("compilation", "1" if tags.compilation else None),
        ):
            if value is not None:
                audio[key] = [value]
        audio.save()


_ALBUMS = [
    # (albumartist, album, year, genre, titles, discs)
    (
        "Aurora Lane",
        "Northern Lights",
        2019,
        "Folk",
        ["Snowfall", "Harbour", "The Long Night", "Lanterns", "Thaw", "Homeward"],
        1,
    ),
    (
        "The Copper Kettles",
        "Steam & Brass",
        2004,
        "Jazz",
        ["Overture", "Pressure Valve", "Brass Monkey", "Whistle Stop", "Coda"],
        1,
    ),
    (
        "Mira Okafor",
        "Tidal",
        2021,
        "Electronic",
        [
            "Low Tide",
            "Undertow",
            "Moonpull",
            "Spring Tide",
            "Ebb",
            "Flow",
            "Slack Water",
            "Rip Current",
        ],
        2,
    ),
    ("Sigur Fjall", "Ísland/Ljós", 2012, "Post-Rock", ["Fyrsta", "Annað", "Þriðja", "Fjórða"], 1),
    (
        "Aurora Lane",
        "Northern Lights",
        2023,
        "Folk",
        ["Snowfall (Live)", "Harbour (Live)", "Encore"],
        1,
    ),
]
_COMPILATION = (
    "Summer Sampler",
    2020,
    [
        ("Aurora Lane", "Sunny Side"),
        ("Mira Okafor", "Heatwave"),
        ("The Copper Kettles", "Iced Tea"),
        ("DJ Null", "Long Weekend"),
    ],
)


def build_demo_library(dest: Path, fixtures: Path | None = None) -> int:
    """Create the demo library under ``dest`` (replacing it). Returns the track count."""
    fixtures = fixtures or fixtures_dir()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    count = 0

    def make(rel: str, fmt: str, tags: Tags) -> None:
        nonlocal count
        target = dest / f"{rel}.{fmt}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fixtures / f"tone.{fmt}", target)
        write_tags(target, tags)
        count += 1

    for a, (artist, album, year, genre, titles, discs) in enumerate(_ALBUMS):
        per_disc = (len(titles) + discs - 1) // discs
        for i, title in enumerate(titles):
            fmt = FORMATS[(a + i) % len(FORMATS)]
            disc = i // per_disc + 1
            number = i % per_disc + 1
            make(
                f"{artist}/{album.replace('/', '-')} {year}/{disc}-{number:02d} {title}",
                fmt,
                Tags(
                    title=title,
                    artist=artist,
                    albumartist=artist,
                    album=album,
                    track=number,
                    disc=disc if discs > 1 else None,
                    disctotal=discs if discs > 1 else None,
                    year=year,
                    genre=genre,
                ),
            )
    album, year, entries = _COMPILATION
    for i, (artist, title) in enumerate(entries):
        make(
            f"Compilations/{album}/{i + 1:02d} {artist} - {title}",
            FORMATS[i % len(FORMATS)],
            Tags(
                title=title,
                artist=artist,
                album=album,
                track=i + 1,
                year=year,
                compilation=True,
                genre="Pop",
            ),
        )
    # Files the way people really have them: untagged, oddly named, not audio at all.
    shutil.copyfile(fixtures / "tone.flac", dest / "untagged recording.flac")
    count += 1
    (dest / "Aurora Lane" / "cover.txt").write_text("not audio: ignored\n")
    (dest / "broken.mp3").write_bytes(b"this is not really an mp3 file")
    count += 1
    return count
