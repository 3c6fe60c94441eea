"""Read the tags MusicFS names tracks by, from any format mutagen knows.

Each tag family (ID3, Vorbis comments, MP4 atoms) spells the same facts differently;
this module maps them all onto one ``Tags`` record.
"""

from __future__ import annotations

import errno
import importlib
import re
import threading
from dataclasses import dataclass, fields
from typing import IO, Any

from musicfs.catalog.chunk_tags import read_chunk_tags
from musicfs.catalog.naming import display_text

# The formats a track is tried as: mutagen.File's own candidates, by module and class.
# mutagen itself is imported on the first parse (``_kinds``), not with this module: the
# catalog's ``Tags`` record is needed by commands that never parse a file (``musicfs
# search`` starts in well under the time importing mutagen's two dozen formats takes).
_FORMATS = (
    "aac.AAC ac3.AC3 aiff.AIFF apev2.APEv2File asf.ASF dsdiff.DSDIFF dsf.DSF flac.FLAC "
    "id3.ID3FileType monkeysaudio.MonkeysAudio mp3.MP3 mp4.MP4 musepack.Musepack "
    "oggflac.OggFLAC oggopus.OggOpus oggspeex.OggSpeex oggtheora.OggTheora "
    "oggvorbis.OggVorbis optimfrog.OptimFROG smf.SMF tak.TAK trueaudio.TrueAudio "
    "wave.WAVE wavpack.WavPack"
)
_kinds_lock = threading.Lock()
_kinds_loaded: list[Any] = []


def _kinds() -> list[Any]:
    """Every format class, imported once (under a lock: two worker threads parsing their
    first file at once must not see a half-imported module). An ``ImportError`` or
    ``MemoryError`` here is this process being short of something, never a fact about
    a file (``read_tags`` says so)."""
    with _kinds_lock:
        if not _kinds_loaded:
            kinds = []
            for spec in _FORMATS.split():
                module, name = spec.split(".")
                kinds.append(getattr(importlib.import_module(f"mutagen.{module}"), name))
            _kinds_loaded.extend(kinds)
        return _kinds_loaded


AUDIO_EXTENSIONS = frozenset(
    {
        ".flac",
        ".mp3",
        ".ogg",
        ".oga",
        ".opus",
        ".m4a",
        ".m4b",
        ".mp4",
        ".aac",
        ".wav",
        ".aif",
        ".aiff",
        ".aifc",
        ".wv",
        ".ape",
        ".mpc",
        ".dsf",
        ".wma",
        ".spx",
        ".tta",
    }
)


def is_audio_path(path: str) -> bool:
    dot = path.rfind(".")
    return dot > path.rfind("/") and path[dot:].lower() in AUDIO_EXTENSIONS


@dataclass(frozen=True, slots=True)
class Tags:
    title: str | None = None
    artist: str | None = None
    albumartist: str | None = None
    album: str | None = None
    track: int | None = None
    disc: int | None = None
    disctotal: int | None = None
    year: int | None = None
    genre: str | None = None
    compilation: bool = False
    duration: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class TagError(Exception):
    """The file's tags (or its container) could not be parsed."""


_NUM = re.compile(r"\s*(\d+)")
_YEAR = re.compile(r"(\d{4})")


def _first_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        value = value[0] if value else None
        if value is None:
            return None
    text = str(value).replace("\x00", " ").strip()
    return text or None


def _number(value: Any) -> tuple[int | None, int | None]:
    """'3', '3/12', (3, 12) -> (3, 12)."""
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        value = value[0]
    if isinstance(value, tuple):
        first = value[0] if len(value) > 0 and value[0] else None
        second = value[1] if len(value) > 1 and value[1] else None
        return first, second
    text = _first_text(value)
    if not text:
        return None, None
    head, _, tail = text.partition("/")
    m1, m2 = _NUM.match(head), _NUM.match(tail)
    return (int(m1.group(1)) if m1 else None, int(m2.group(1)) if m2 else None)


def _year(value: Any) -> int | None:
    text = _first_text(value)
    if not text:
        return None
    m = _YEAR.search(text)
    return int(m.group(1)) if m else None


def _truthy(value: Any) -> bool:
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, bool):
        return value
    text = _first_text(value)
    return text is not None and text.lower() not in ("0", "false", "no")


def _from_id3(tags: Any) -> dict[str, Any]:
    def text(frame: str) -> str | None:
        f = tags.get(frame)
        return _first_text(f.text) if f is not None and hasattr(f, "text") else None

    track, _ = _number(text("TRCK"))
    disc, disctotal = _number(text("TPOS"))
    year = _year(text("TDRC")) or _year(text("TYER")) or _year(text("TDOR"))
    return {
        "title": text("TIT2"),
        "artist": text("TPE1"),
        "albumartist": text("TPE2"),
        "album": text("TALB"),
        "track": track,
        "disc": disc,
        "disctotal": disctotal,
        "year": year,
        "genre": text("TCON"),
        "compilation": _truthy(text("TCMP")),
    }


def _from_mp4(tags: Any) -> dict[str, Any]:
    track, _ = _number(tags.get("trkn"))
    disc, disctotal = _number(tags.get("disk"))
    return {
        "title": _first_text(tags.get("\xa9nam")),
        "artist": _first_text(tags.get("\xa9ART")),
        "albumartist": _first_text(tags.get("aART")),
        "album": _first_text(tags.get("\xa9alb")),
        "track": track,
        "disc": disc,
        "disctotal": disctotal,
        "year": _year(tags.get("\xa9day")),
        "genre": _first_text(tags.get("\xa9gen")),
        "compilation": _truthy(tags.get("cpil")),
    }


def _from_vorbis(tags: Any) -> dict[str, Any]:
    """Vorbis comments (FLAC, Ogg, Opus) and APEv2: case-insensitive text keys."""
    lowered: dict[str, Any] = {}
    for key, value in tags.items():
        lowered.setdefault(str(key).lower(), value)

    def get(*keys: str) -> Any:
        for key in keys:
            if key in lowered:
                value = lowered[key]
                return (
                    value.value
                    if hasattr(value, "value") and not isinstance(value, list)
                    else value
                )
        return None

    track, _ = _number(get("tracknumber", "track"))
    disc, disctotal = _number(get("discnumber", "disc"))
    if disctotal is None:
        disctotal = _number(get("disctotal", "totaldiscs"))[0]
    return {
        "title": _first_text(get("title")),
        "artist": _first_text(get("artist")),
        "albumartist": _first_text(get("albumartist", "album artist", "album_artist")),
        "album": _first_text(get("album")),
        "track": track,
        "disc": disc,
        "disctotal": disctotal,
        "year": _year(get("date", "year", "originaldate")),
        "genre": _first_text(get("genre")),
        "compilation": _truthy(get("compilation")),
    }


def _io_cause(exc: BaseException) -> OSError | None:
    """mutagen wraps I/O errors in MutagenError; dig the OSError back out."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, OSError):
            return seen
        if seen.args and isinstance(seen.args[0], OSError):
            return seen.args[0]
        seen = seen.__cause__ or seen.__context__
    return None


# mutagen.File tries every format on the first 128 bytes. One candidate, APEv2File (any
# file with an APEv2 tag), also reads the file's last 160 bytes for the tag's footer --
# a request to the origin at the far end of a FLAC, Ogg or MP4 that needs none. Its score
# is at most 1, so a format scoring 2 or more (its magic bytes, or magic and extension)
# wins without it; only then is it left out, which keeps mutagen's choice exactly.
_DECISIVE = 2


def _parse(fileobj: IO[bytes], filename: str) -> Any:
    kinds = _kinds()
    fileobj.seek(0)
    header = fileobj.read(128)
    scored = sorted(
        ((kind.score(filename, fileobj, header), kind.__name__), kind)
        for kind in kinds
        if kind.__name__ != "APEv2File"
    )
    (best, _), kind = scored[-1]
    fileobj.seek(0)
    if best < _DECISIVE:
        return mutagen_file(fileobj, filename, kinds)
    if kind.__name__ == "MP3":
        audio = mutagen_file(fileobj, filename, [kind], load_v1=False)
        tags = getattr(audio, "tags", None)
        if tags is not None and all(tags.getall(frame) for frame in _ID3V1_FRAMES):
            return audio
        fileobj.seek(0)
    return mutagen_file(fileobj, filename, [kind])


# What an ID3v1 tag (the file's last 128 bytes) can add to an MP3's ID3v2 tag: mutagen
# adds its frames where the v2 tag has none. When the v2 tag has them all, the v1 tag
# changes nothing MusicFS reads and the end of the file is not fetched.
_ID3V1_FRAMES = ("TIT2", "TPE1", "TALB", "TDRC", "TRCK", "TCON")


def mutagen_file(
    fileobj: IO[bytes], filename: str, options: list[Any], *, load_v1: bool = True
) -> Any:
    """``mutagen.File`` among ``options``; ``load_v1=False`` (one MP3 option): without
    reading an ID3v1 tag."""
    if not load_v1:
        (kind,) = options
        return kind(fileobj, filename=filename, load_v1=False)
    import mutagen

    return mutagen.File(fileobj, filename=filename, options=options)


def read_tags(fileobj: IO[bytes], filename: str) -> Tags:
    """Parse the tags of one file. Raises ``TagError`` if mutagen cannot make sense of it."""
    try:
        audio = _parse(fileobj, filename)
    except (ImportError, MemoryError) as exc:
        # This process is short of something (descriptors, memory): retry later, never
        # record it as the file's broken tags.
        raise OSError(errno.EAGAIN, f"cannot parse tags right now: {exc!r}") from exc
    except OSError:
        raise  # the bytes could not be fetched (the header read): not a fact about the tags
    except Exception as exc:  # mutagen raises many types for bad input
        io_error = _io_cause(exc)
        if io_error is not None:
            # The bytes could not be fetched: that is not a fact about the tags.
            raise io_error from exc
        raise TagError(f"{type(exc).__name__}: {exc}") from exc
    if audio is None:
        raise TagError("not a recognised audio format")
    duration = getattr(getattr(audio, "info", None), "length", None)
    tags = audio.tags
    values: dict[str, Any]
    if tags is None:
        values = {}
    elif _is_instance(tags, "mutagen.id3", "ID3"):
        values = _from_id3(tags)
    elif _is_instance(tags, "mutagen.mp4", "MP4Tags"):
        values = _from_mp4(tags)
    else:
        values = _from_vorbis(tags)
    if _wants_chunk_tags(audio, values):
        chunk_values = _from_vorbis(read_chunk_tags(fileobj))
        values = {
            k: v if v not in (None, False) else chunk_values.get(k) for k, v in values.items()
        }
        for key, value in chunk_values.items():
            values.setdefault(key, value)
    if not any(values.get(key) for key in ("title", "artist", "albumartist", "album")):
        # No tags at all: the folders usually say it (Artist/Album/NN Title.ext).
        values.update(tags_from_path(filename))
    values["duration"] = float(duration) if duration else None
    return Tags(**values)


def _is_instance(value: Any, module: str, name: str) -> bool:
    return isinstance(value, getattr(importlib.import_module(module), name))


def _wants_chunk_tags(audio: Any, values: dict[str, Any]) -> bool:
    """WAV and AIFF keep text in their own chunks too; ID3 (if any) wins, they fill in."""
    name = type(audio).__name__
    return name in ("WAVE", "AIFF") and not all(
        values.get(key) for key in ("title", "artist", "album")
    )


# "01 Title", "01 - Title", "01. Title", "1-01 Title" (disc-track), "01_Title".
_NUMBERED = re.compile(
    r"^(?:(?P<disc>\d{1,2})-)?(?P<track>\d{1,3})(?:\s*[-.]\s*|\s+|_)(?P<title>\S.*)$"
)
_ALBUM_YEAR = re.compile(r"^(?P<album>.+?)\s*[(\[](?P<year>\d{4})[)\]]$")


def tags_from_path(path: str) -> dict[str, Any]:
    """What a library laid out as ``Artist/Album (Year)/NN Title.ext`` says about a file."""
    parts = [display_text(part) for part in path.strip("/").split("/")]
    stem = parts[-1].rsplit(".", 1)[0] if "." in parts[-1] else parts[-1]
    values: dict[str, Any] = {}
    m = _NUMBERED.match(stem)
    if m:
        values["track"] = int(m.group("track"))
        if m.group("disc"):
            values["disc"] = int(m.group("disc"))
        stem = m.group("title")
    values["title"] = stem.strip() or None
    if len(parts) >= 2:
        album = parts[-2]
        y = _ALBUM_YEAR.match(album)
        if y:
            album, values["year"] = y.group("album"), int(y.group("year"))
        values["album"] = album
    if len(parts) >= 3:
        values["artist"] = parts[-3]
    return values
