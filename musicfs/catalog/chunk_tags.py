"""Text tags kept in chunks of RIFF (WAV) and IFF (AIFF) containers, which mutagen only
reads when they are ID3: the RIFF ``LIST INFO`` chunk (``INAM``, ``IART``, ``IPRD`` ...)
and AIFF's ``NAME``/``AUTH`` chunks. Many rippers and editors write only these."""

from __future__ import annotations

from typing import IO, Any

# RIFF INFO ids -> our field names (the EXIF-derived list that Windows and most taggers use).
_RIFF_INFO = {
    "INAM": "title",
    "IART": "artist",
    "IPRD": "album",
    "ICRD": "date",
    "IGNR": "genre",
    "ITRK": "tracknumber",
    "IPRT": "tracknumber",
    "TRCK": "tracknumber",
}
_AIFF_TEXT = {"NAME": "title", "AUTH": "artist"}
MAX_TEXT = 4096  # a tag value longer than this is not a name anyone wants


def decode_text(raw: bytes) -> str | None:
    """Chunk text is NUL-terminated, in UTF-8 from newer tools and Windows-1252/Latin-1
    from older ones."""
    raw = raw.split(b"\x00", 1)[0].strip()
    if not raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _texts(chunks: list[Any], names: dict[str, str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for chunk in chunks:
        key = names.get(chunk.id)
        if key is None or key in found or chunk.data_size > MAX_TEXT:
            continue
        text = decode_text(chunk.read())
        if text:
            found[key] = text
    return found


def _riff_info(fileobj: IO[bytes]) -> dict[str, str]:
    from mutagen._iff import IffContainerChunkMixin
    from mutagen._riff import RiffFile

    found: dict[str, str] = {}
    # An encoder's own INFO list (ISFT only) often comes before the tagger's.
    for chunk in RiffFile(fileobj).root.subchunks():
        if chunk.id == "LIST" and getattr(chunk, "name", None) == "INFO":
            assert isinstance(chunk, IffContainerChunkMixin)
            for key, value in _texts(chunk.subchunks(), _RIFF_INFO).items():
                found.setdefault(key, value)
    return found


def _aiff_text(fileobj: IO[bytes]) -> dict[str, str]:
    from mutagen.aiff import AIFFFile

    root: Any = AIFFFile(fileobj).root
    return _texts(root.subchunks(), _AIFF_TEXT)


def read_chunk_tags(fileobj: IO[bytes]) -> dict[str, str]:
    """Vorbis-style keys (title, artist, album, date, genre, tracknumber) found in the
    container's text chunks; empty for any other format or a damaged container."""
    from mutagen._iff import InvalidChunk
    from mutagen._iff import error as IffError

    fileobj.seek(0)
    head = fileobj.read(12)
    try:
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            fileobj.seek(0)
            return _riff_info(fileobj)
        if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            fileobj.seek(0)
            return _aiff_text(fileobj)
    except (IffError, InvalidChunk, EOFError, ValueError):
        return {}
    return {}
