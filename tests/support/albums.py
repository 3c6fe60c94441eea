"""Small but real albums for the end-to-end tests and the benchmarks, encoded by ffmpeg.

The committed fixtures are a fraction of a second each; players, scanners and the cache
need tracks that last seconds and span several chunks. ``make_albums`` encodes them with
ffmpeg's test sources (tones over noise, so FLAC cannot shrink them to nothing), in the
formats players meet, and tags them with ``musicfs.demo.write_tags``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from musicfs.catalog.tags import Tags
from musicfs.demo import write_tags

# ffmpeg encoder arguments for each extension.
ENCODERS = {
    "flac": ["-c:a", "flac"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "192k"],
    "ogg": ["-c:a", "libvorbis", "-q:a", "5"],
    "opus": ["-c:a", "libopus", "-b:a", "128k"],
    "m4a": ["-c:a", "aac", "-b:a", "192k"],
    "wav": ["-c:a", "pcm_s16le"],
}


@dataclass(frozen=True)
class AlbumSpec:
    artist: str
    album: str
    year: int
    formats: tuple[str, ...]  # one track per entry, in track order
    seconds: float  # length of each track
    noise: float = 0.05  # amplitude of the noise under the tone
    hires: bool = False  # 96 kHz / 24 bit, white noise: ~0.5 MB a second of FLAC

    def tracks(self) -> list[tuple[str, Tags]]:
        return [
            (
                fmt,
                Tags(
                    title=f"{self.album} {n + 1}",
                    artist=self.artist,
                    albumartist=self.artist,
                    album=self.album,
                    track=n + 1,
                    year=self.year,
                    genre="Test",
                ),
            )
            for n, fmt in enumerate(self.formats)
        ]


# Mixed formats, as a real collection has them: every decoder path a player takes.
MIXED = AlbumSpec("Aurora Tapes", "First Light", 2019, tuple(ENCODERS), seconds=5)
# Hi-res lossless tracks of ~7 MB (seven 1 MiB chunks: more than a tag read and its
# read-ahead fetch) for playback while the origin fails.
LOSSLESS = AlbumSpec(
    "Zeta Drift", "Long Hours", 2021, ("flac",) * 6, seconds=24, noise=0.5, hires=True
)


def encode(dest: Path, fmt: str, seconds: float, frequency: int, noise: float, hires: bool) -> Path:
    """One stereo track: a tone mixed over noise."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    rate = 96000 if hires else 48000 if fmt == "opus" else 44100
    color = "white" if hires else "pink"
    sample = ":sample_fmts=s32" if hires else ""
    sources = (
        f"sine=frequency={frequency}:sample_rate={rate}:duration={seconds}[t];"
        f"anoisesrc=color={color}:sample_rate={rate}:amplitude={noise}:duration={seconds}"
        f":seed={frequency}[n];"
        f"[t][n]amix=inputs=2:normalize=0,aformat=channel_layouts=stereo{sample}[out]"
    )
    subprocess.run(
        [
            "ffmpeg",
            *("-nostdin", "-v", "error", "-y", "-filter_complex", sources, "-map", "[out]"),
            *ENCODERS[fmt],
            *(["-bits_per_raw_sample", "24"] if hires else []),
            str(dest),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return dest


def make_albums(root: Path, *specs: AlbumSpec) -> list[Path]:
    """Encode and tag ``specs`` under ``root/<artist>/<album>/NN.<ext>``; world-readable
    (an SFTP server's unprivileged user reads them too). Returns the files in order."""
    if shutil.which("ffmpeg") is None:
        raise FileNotFoundError("ffmpeg is not installed (scripts/setup-debian.sh test)")
    made = []
    for a, spec in enumerate(specs):
        for n, (fmt, tags) in enumerate(spec.tracks()):
            path = root / spec.artist / spec.album / f"{n + 1:02d}.{fmt}"
            encode(path, fmt, spec.seconds, 220 + 110 * n + 7 * a, spec.noise, spec.hires)
            write_tags(path, tags)
            made.append(path)
    for p in [root, *root.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return made


def probe(path: Path) -> dict[str, object]:
    """What a library scanner learns from a track: duration, codec, rate, channels."""
    out = subprocess.run(
        [
            "ffprobe",
            *("-v", "error", "-select_streams", "a:0", "-of", "json"),
            *("-show_entries", "format=duration:stream=codec_name,sample_rate,channels"),
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    data = json.loads(out.stdout)
    stream = data["streams"][0]
    return {
        "duration": data["format"]["duration"],
        "codec": stream["codec_name"],
        "sample_rate": stream["sample_rate"],
        "channels": stream["channels"],
    }


@dataclass(frozen=True)
class Decoded:
    returncode: int
    md5: str  # of the decoded PCM, "" when ffmpeg failed before writing it
    stderr: str


def decode(path: Path, timeout: float = 120) -> Decoded:
    """Decode every audio sample of ``path`` with ffmpeg; the MD5 of the PCM it produced."""
    proc = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a", "-f", "md5", "-"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    md5 = proc.stdout.strip().removeprefix("MD5=")
    return Decoded(proc.returncode, md5, proc.stderr)


def make_scanner_library(
    root: Path, flac: int, mp3: int, *, flac_seconds: float, mp3_seconds: float
) -> list[Path]:
    """What library scanners meet: album-length tracks -- hi-res FLAC (~0.28 MB a second)
    and 192k MP3 (~24 KB a second) -- each with a 1200x1200 JPEG cover embedded (a FLAC
    picture block, an ID3 APIC frame). Returns the files, sorted."""
    from mutagen.flac import FLAC, Picture
    from mutagen.id3 import APIC, ID3

    root.mkdir(parents=True, exist_ok=True)
    cover = root / "cover.jpg"
    subprocess.run(
        [
            *("ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"),
            *("testsrc2=size=1200x1200:duration=1", "-frames:v", "1", "-q:v", "3", str(cover)),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    art = cover.read_bytes()
    cover.unlink()
    made = []
    for n in range(flac + mp3):
        fmt = "flac" if n < flac else "mp3"
        album = "Lossless Nights" if fmt == "flac" else "Compressed Days"
        number = n + 1 if fmt == "flac" else n - flac + 1
        path = root / "Bench Artist" / album / f"{number:02d}.{fmt}"
        seconds = flac_seconds if fmt == "flac" else mp3_seconds
        encode(path, fmt, seconds, 220 + 37 * n, 0.5 if fmt == "flac" else 0.05, fmt == "flac")
        tags = Tags(
            title=f"{album} {number}",
            artist="Bench Artist",
            albumartist="Bench Artist",
            album=album,
            track=number,
            year=2024,
            genre="Test",
        )
        write_tags(path, tags)
        if fmt == "flac":
            audio = FLAC(path)
            picture = Picture()
            picture.type, picture.mime, picture.data = 3, "image/jpeg", art
            picture.width = picture.height = 1200
            audio.add_picture(picture)
            audio.save()
        else:
            id3 = ID3(path)
            id3.add(APIC(encoding=3, mime="image/jpeg", type=3, desc="cover", data=art))
            id3.save()
        made.append(path)
    for p in [root, *root.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return sorted(made)
