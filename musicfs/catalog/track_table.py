"""The ``tracks`` and ``sources`` tables: what a sync found on each origin, and the tracks
read back from them.

Each function runs on the connection it is given -- the catalog's writer, inside the
caller's lock and transaction (``Catalog``), or a read-only connection of the served tree.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import apsw

from musicfs.catalog.inodes import file_key
from musicfs.catalog.model import Source, Track
from musicfs.catalog.tags import Tags

# One scanned file: (path, size, mtime_ns, etag, tags, tag_error).
Scanned = tuple[str, int, int, str | None, Tags | None, str | None]
# One file an origin also holds: (path, size, mtime_ns, etag).
Listed = tuple[str, int, int, str | None]

TAG_COLUMNS = (
    "title",
    "artist",
    "albumartist",
    "album",
    "track",
    "disc",
    "disctotal",
    "year",
    "genre",
    "compilation",
    "duration",
)
# Tag values many tracks share (an album's ten tracks, an artist's hundred): one string
# each when a whole catalog is read for planning.
_SHARED_TAGS = ("artist", "albumartist", "album", "genre")

TRACK_SELECT = f"SELECT id, path, size, mtime_ns, etag, {', '.join(TAG_COLUMNS)}, tag_error "

_ALBUM_ARTIST = "coalesce(albumartist, artist)"
_ALBUM_ORDER = "coalesce(disc, 1), coalesce(track, 0), path"


def fs_key(path: str) -> bytes:
    return os.fsencode(path)


def fs_path(key: bytes) -> str:
    return os.fsdecode(key)


# -- writing -------------------------------------------------------------------------------


def known_sources(db: apsw.Connection, origin: str) -> dict[str, tuple[int, int, str | None]]:
    """path -> (size, mtime_ns, etag) of what ``origin`` had at its last sync."""
    rows = db.execute(
        "SELECT t.path, s.size, s.mtime_ns, s.etag FROM sources s "
        "JOIN tracks t ON t.id = s.track_id WHERE s.origin = ?",
        (origin,),
    )
    return {fs_path(p): (size, mtime, etag) for p, size, mtime, etag in rows}


def upsert_tracks(
    db: apsw.Connection, origin: str, batch: Iterable[Scanned], *, version: int, now: int
) -> None:
    """Write scanned files as tracks of catalog ``version``, held by ``origin``. The
    track's own size/mtime/tags follow the origin that last (re)scanned it."""
    for path, size, mtime_ns, etag, tags, tag_error in batch:
        t = tags or Tags()
        values = [getattr(t, c) for c in TAG_COLUMNS]
        values[TAG_COLUMNS.index("compilation")] = int(t.compilation)
        db.execute(
            f"""
            INSERT INTO tracks(path, size, mtime_ns, etag, {", ".join(TAG_COLUMNS)},
                               tag_error, scanned_at, changed)
            VALUES (?, ?, ?, ?, {", ".join("?" for _ in TAG_COLUMNS)}, ?, ?, ?)
            ON CONFLICT(path) DO UPDATE SET
                size=excluded.size, mtime_ns=excluded.mtime_ns, etag=excluded.etag,
                {", ".join(f"{c}=excluded.{c}" for c in TAG_COLUMNS)},
                tag_error=excluded.tag_error, scanned_at=excluded.scanned_at,
                changed=excluded.changed
            """,
            (fs_key(path), size, mtime_ns, etag, *values, tag_error, now, version),
        )
        _record_source(db, origin, (path, size, mtime_ns, etag))


def add_sources(db: apsw.Connection, origin: str, batch: Iterable[Listed]) -> None:
    """Record that ``origin`` also holds these already-catalogued files."""
    for listed in batch:
        _record_source(db, origin, listed)


def _record_source(db: apsw.Connection, origin: str, listed: Listed) -> None:
    path, size, mtime_ns, etag = listed
    db.execute(
        """
        INSERT INTO sources(track_id, origin, size, mtime_ns, etag)
        SELECT id, ?, ?, ?, ? FROM tracks WHERE path = ?
        ON CONFLICT(track_id, origin) DO UPDATE SET
            size=excluded.size, mtime_ns=excluded.mtime_ns, etag=excluded.etag
        """,
        (origin, size, mtime_ns, etag, fs_key(path)),
    )


def remove_sources(db: apsw.Connection, origin: str, paths: Iterable[str]) -> int:
    """Forget ``origin``'s copies of ``paths``; tracks left with no copy are removed, and
    their inode numbers with them. Returns how many tracks that removed."""
    for path in paths:
        db.execute(
            "DELETE FROM sources WHERE origin = ? AND track_id = "
            "(SELECT id FROM tracks WHERE path = ?)",
            (origin, fs_key(path)),
        )
    cur = db.execute(
        "DELETE FROM tracks WHERE id NOT IN (SELECT track_id FROM sources) RETURNING id"
    )
    ids = [r[0] for r in cur]
    db.executemany("DELETE FROM inodes WHERE key = ?", [(file_key(i),) for i in ids])
    return len(ids)


def forget_untagged_mtimes(db: apsw.Connection) -> int:
    """Make the next sync read again the tags of tracks that have none to name them by,
    by forgetting their sources' mtimes (path, size and mtime -- hence cache keys -- stay
    as they were). Returns how many tracks that marked."""
    cur = db.execute(
        "UPDATE sources SET mtime_ns = -1 WHERE track_id IN (SELECT id FROM tracks "
        "WHERE title IS NULL AND artist IS NULL AND albumartist IS NULL "
        "AND album IS NULL) RETURNING track_id"
    )
    return len({row[0] for row in cur})


# -- reading -------------------------------------------------------------------------------


def track_of(row: Sequence[Any], sources: Iterable[Source], *, share: bool = False) -> Track:
    """A track from a ``tracks`` row (id, path, size, mtime_ns, etag, tags..., tag_error);
    ``share``: one string object for equal shared tag values."""
    tag_values = dict(zip(TAG_COLUMNS, row[5:-1], strict=True))
    if share:
        for name in _SHARED_TAGS:
            if tag_values[name] is not None:
                tag_values[name] = sys.intern(tag_values[name])
    tag_values["compilation"] = bool(tag_values["compilation"])
    return Track(
        id=row[0],
        path=fs_path(row[1]),
        size=row[2],
        mtime_ns=row[3],
        etag=row[4],
        tags=Tags(**tag_values),
        tag_error=row[-1],
        sources=tuple(sources),
    )


def read_track(db: apsw.Connection, track_id: int) -> Track | None:
    """One track with its sources (``db``: the catalog's, or a reader's connection)."""
    row = db.execute(TRACK_SELECT + "FROM tracks WHERE id = ?", (track_id,)).fetchone()
    if row is None:
        return None
    sources = [
        Source(origin, size, mtime, etag)
        for origin, size, mtime, etag in db.execute(
            "SELECT origin, size, mtime_ns, etag FROM sources WHERE track_id = ?", (track_id,)
        )
    ]
    return track_of(row, sources)


def read_tracks_for_planning(db: apsw.Connection) -> list[Track]:
    """Every track without its sources (naming needs none), by path: at 100,000 tracks
    about a third less memory than ``read_tracks``."""
    return [
        track_of(row, (), share=True)
        for row in db.execute(TRACK_SELECT + "FROM tracks ORDER BY path")
    ]


def read_tracks(db: apsw.Connection) -> list[Track]:
    """Every track with its sources, by path."""
    sources: dict[int, list[Source]] = {}
    for track_id, origin, size, mtime, etag in db.execute(
        "SELECT track_id, origin, size, mtime_ns, etag FROM sources"
    ):
        sources.setdefault(track_id, []).append(Source(origin, size, mtime, etag))
    return [
        track_of(row, sources.get(row[0], ()))
        for row in db.execute(TRACK_SELECT + "FROM tracks ORDER BY path")
    ]


def next_in_album(db: apsw.Connection, track_id: int) -> Track | None:
    """The track after ``track_id`` on its album -- disc, then track number, then path
    -- for playback prefetch; None at the album's end or for a track without one."""
    row = db.execute(
        f"SELECT album, {_ALBUM_ARTIST}, {_ALBUM_ORDER} FROM tracks WHERE id = ?",
        (track_id,),
    ).fetchone()
    if row is None or row[0] is None:
        return None
    following = db.execute(
        f"SELECT id FROM tracks WHERE album = ? AND {_ALBUM_ARTIST} IS ? "
        f"AND ({_ALBUM_ORDER}) > (?, ?, ?) ORDER BY {_ALBUM_ORDER} LIMIT 1",
        tuple(row),
    ).fetchone()
    return None if following is None else read_track(db, following[0])


def track_sizes(db: apsw.Connection) -> dict[str, int]:
    return {fs_path(p): size for p, size in db.execute("SELECT path, size FROM tracks")}


def track_count(db: apsw.Connection) -> int:
    row = db.execute("SELECT count(*) FROM tracks").fetchone()
    return int(row[0]) if row else 0
