"""The SQLite catalog (through apsw): schema, migrations, integrity and queries.

The catalog is the source of truth for which tracks exist and what they are called. It is
only touched from worker threads (``Catalog.run``), never from the trio loop itself.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import apsw
import trio

from musicfs.catalog.inodes import ROOT_INODE, ROOT_KEY, file_key
from musicfs.catalog.model import Source, Track
from musicfs.catalog.tags import Tags
from musicfs.catalog.tree import TreeRow
from musicfs.failpoints import fail_point

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 4


class CatalogError(Exception):
    pass


class CatalogCorrupt(CatalogError):
    pass


class SchemaTooNew(CatalogError):
    pass


def _migrate_0_to_1(db: apsw.Connection) -> None:
    db.execute(
        """
        CREATE TABLE tracks(
            id INTEGER PRIMARY KEY,
            path BLOB NOT NULL UNIQUE,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            etag TEXT,
            title TEXT, artist TEXT, albumartist TEXT, album TEXT,
            track INTEGER, disc INTEGER, disctotal INTEGER, year INTEGER, genre TEXT,
            compilation INTEGER NOT NULL DEFAULT 0,
            duration REAL,
            tag_error TEXT,
            scanned_at INTEGER NOT NULL
        );
        CREATE TABLE sources(
            track_id INTEGER NOT NULL REFERENCES tracks(id) ON DELETE CASCADE,
            origin TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            etag TEXT,
            PRIMARY KEY (track_id, origin)
        );
        CREATE INDEX sources_by_origin ON sources(origin);
        -- Inode numbers handed to the kernel; kept so they survive restarts.
        CREATE TABLE inodes(ino INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE);
        CREATE TABLE sync_state(key TEXT PRIMARY KEY, value TEXT);
        """
    )
    db.execute("INSERT INTO inodes(ino, key) VALUES (?, ?)", (ROOT_INODE, ROOT_KEY))


def _migrate_1_to_2(db: apsw.Connection) -> None:
    # A pin is kept as the query (or mounted path) the user typed, not as a list of
    # tracks: it is re-evaluated after every sync ("smart pin", musicfs/pins.py).
    db.execute(
        """
        CREATE TABLE pins(
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('query', 'path')),
            text TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            UNIQUE (kind, text)
        );
        """
    )


def _migrate_2_to_3(db: apsw.Connection) -> None:
    db.execute(
        """
        -- The tree the mount serves, one row per folder and file; published by a sync in
        -- one transaction (readers see the old rows or the new, never a mix).
        CREATE TABLE tree(
            ino INTEGER PRIMARY KEY,
            parent INTEGER NOT NULL,
            name BLOB NOT NULL,
            track_id INTEGER,  -- NULL for a folder
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            subdirs INTEGER NOT NULL
        );
        CREATE UNIQUE INDEX tree_by_parent ON tree(parent, name);
        """
    )


def _migrate_3_to_4(db: apsw.Connection) -> None:
    # Change stamps, so that what derives from the tree (the search index) reads only what
    # changed since it last looked, never the whole catalog.
    db.execute(
        """
        -- The tree generation that last wrote the row.
        ALTER TABLE tree ADD COLUMN gen INTEGER NOT NULL DEFAULT 0;
        -- The catalog version of the track's last (re)scan.
        ALTER TABLE tracks ADD COLUMN changed INTEGER NOT NULL DEFAULT 0;
        -- Tracks that left the tree, and the generation that took them out.
        CREATE TABLE tree_gone(track_id INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
        -- Names this catalog: a catalog rebuilt from scratch counts generations from 1
        -- again, and what was derived from the old one must not be taken for current.
        INSERT OR REPLACE INTO meta(key, value) VALUES ('catalog_id', lower(hex(randomblob(8))));
        """
    )


# Index i migrates from version i to i + 1. Append, never edit.
MIGRATIONS: list[Callable[[apsw.Connection], None]] = [
    _migrate_0_to_1,
    _migrate_1_to_2,
    _migrate_2_to_3,
    _migrate_3_to_4,
]

# SQLite's page cache of the read connection, in KiB: the tree table and its index of
# 100,000 tracks take about 15 MB of pages.
READ_CACHE_KIB = 16 * 1024

# Bumped in the transaction of every change to tracks or sources: a tree published from
# catalog version N is current while the catalog is still at N (a restart needs no new
# tree).
_VERSION_KEY = "catalog_version"
# The published tree: its generation, counts, template and the catalog version it is of.
_TREE_KEYS = (
    "catalog_id",
    "tree_generation",
    "tree_files",
    "tree_bytes",
    "tree_nodes",
    "tree_template",
    "tree_catalog_version",
)


@dataclass(frozen=True)
class TreeState:
    generation: int = 0  # 0: no tree published yet
    files: int = 0
    total_bytes: int = 0
    nodes: int = 0
    template: str = ""
    catalog_version: int = -1
    catalog_id: str = ""


_TAG_COLUMNS = (
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


def fs_key(path: str) -> bytes:
    return os.fsencode(path)


def fs_path(key: bytes) -> str:
    return os.fsdecode(key)


class Catalog:
    """One catalog file. Methods are blocking; call them through ``run`` from trio code."""

    def __init__(
        self, path: Path, *, migrations: Sequence[Callable[[apsw.Connection], None]] = MIGRATIONS
    ):
        self.path = path
        self._lock = threading.Lock()
        # One thread at a time: SQLite serialises writers anyway, and a limiter of one
        # keeps a slow query from piling up worker threads.
        self.limiter = trio.CapacityLimiter(1)
        self._reader: apsw.Connection | None = None
        self.closed = False  # the writer closed: every change is in the file
        path.parent.mkdir(parents=True, exist_ok=True)
        fail_point("catalog.open")
        try:
            self.db = apsw.Connection(str(path))
            self.db.set_busy_timeout(5000)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate(migrations)
        except (apsw.CorruptError, apsw.NotADBError) as exc:
            raise CatalogCorrupt(f"{path}: {exc}") from exc

    # -- lifecycle -------------------------------------------------------------------

    def _version(self) -> int:
        self.db.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value)")
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self, migrations: Sequence[Callable[[apsw.Connection], None]]) -> None:
        with self.db:
            version = self._version()
            if version > len(migrations):
                raise SchemaTooNew(
                    f"{self.path}: catalog schema version {version} is newer than this "
                    f"MusicFS understands ({len(migrations)}); upgrade MusicFS or move the "
                    "catalog aside"
                )
            for target in range(version, len(migrations)):
                log.info("catalog %s: migrating schema %d -> %d", self.path, target, target + 1)
                migrations[target](self.db)
            self.db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                (len(migrations),),
            )

    def schema_version(self) -> int:
        with self._lock:
            return self._version()

    def check(self, full: bool = False) -> list[str]:
        """Problems found by SQLite's quick_check (or integrity_check when ``full``)."""
        pragma = "integrity_check" if full else "quick_check"
        with self._lock:
            try:
                rows = [r[0] for r in self.db.execute(f"PRAGMA {pragma}")]
            except (apsw.CorruptError, apsw.NotADBError) as exc:
                return [str(exc)]
        return [] if rows == ["ok"] else rows

    def close(self, keep_reader: bool = False) -> None:
        """Close the catalog. ``keep_reader`` closes only the writer: the daemon's mount
        answers metadata from the read connection until it is unmounted, which comes
        after the stores are closed (then ``close_reader``)."""
        with self._lock:
            self.db.close()
            self.closed = True
        if not keep_reader:
            self.close_reader()

    def close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def reader(self) -> apsw.Connection:
        """The read-only connection the served tree queries from the trio loop (its
        queries take microseconds and never wait for the writer: WAL)."""
        if self._reader is None:
            self._reader = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READONLY)
            self._reader.set_busy_timeout(1000)
            self._reader.execute(f"PRAGMA cache_size=-{READ_CACHE_KIB}")
        return self._reader

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # -- tracks ----------------------------------------------------------------------

    def known_sources(self, origin: str) -> dict[str, tuple[int, int, str | None]]:
        """path -> (size, mtime_ns, etag) of what ``origin`` had at its last sync."""
        with self._lock:
            rows = self.db.execute(
                "SELECT t.path, s.size, s.mtime_ns, s.etag FROM sources s "
                "JOIN tracks t ON t.id = s.track_id WHERE s.origin = ?",
                (origin,),
            )
            return {fs_path(p): (size, mtime, etag) for p, size, mtime, etag in rows}

    def upsert(
        self,
        origin: str,
        batch: Iterable[tuple[str, int, int, str | None, Tags | None, str | None]],
    ) -> None:
        """Record one batch of scanned files in one transaction.

        Each item is (path, size, mtime_ns, etag, tags, tag_error). The track's own
        size/mtime/tags follow the origin that last (re)scanned it.
        """
        now = time.time_ns()
        fail_point("catalog.upsert")
        with self._lock, self.db:
            version = self._changed()
            for path, size, mtime_ns, etag, tags, tag_error in batch:
                t = tags or Tags()
                values = [getattr(t, c) for c in _TAG_COLUMNS]
                values[_TAG_COLUMNS.index("compilation")] = int(t.compilation)
                self.db.execute(
                    f"""
                    INSERT INTO tracks(path, size, mtime_ns, etag, {", ".join(_TAG_COLUMNS)},
                                       tag_error, scanned_at, changed)
                    VALUES (?, ?, ?, ?, {", ".join("?" for _ in _TAG_COLUMNS)}, ?, ?, ?)
                    ON CONFLICT(path) DO UPDATE SET
                        size=excluded.size, mtime_ns=excluded.mtime_ns, etag=excluded.etag,
                        {", ".join(f"{c}=excluded.{c}" for c in _TAG_COLUMNS)},
                        tag_error=excluded.tag_error, scanned_at=excluded.scanned_at,
                        changed=excluded.changed
                    """,
                    (fs_key(path), size, mtime_ns, etag, *values, tag_error, now, version),
                )
                self.db.execute(
                    """
                    INSERT INTO sources(track_id, origin, size, mtime_ns, etag)
                    SELECT id, ?, ?, ?, ? FROM tracks WHERE path = ?
                    ON CONFLICT(track_id, origin) DO UPDATE SET
                        size=excluded.size, mtime_ns=excluded.mtime_ns, etag=excluded.etag
                    """,
                    (origin, size, mtime_ns, etag, fs_key(path)),
                )

    def add_source(self, origin: str, batch: Iterable[tuple[str, int, int, str | None]]) -> None:
        """Record that ``origin`` also holds these already-catalogued files."""
        with self._lock, self.db:
            self._changed()
            for path, size, mtime_ns, etag in batch:
                self.db.execute(
                    """
                    INSERT INTO sources(track_id, origin, size, mtime_ns, etag)
                    SELECT id, ?, ?, ?, ? FROM tracks WHERE path = ?
                    ON CONFLICT(track_id, origin) DO UPDATE SET
                        size=excluded.size, mtime_ns=excluded.mtime_ns, etag=excluded.etag
                    """,
                    (origin, size, mtime_ns, etag, fs_key(path)),
                )

    def remove_sources(self, origin: str, paths: Iterable[str]) -> int:
        """Forget ``origin``'s copies of ``paths``; tracks left with no copy are removed."""
        removed = 0
        with self._lock, self.db:
            self._changed()
            for path in paths:
                self.db.execute(
                    "DELETE FROM sources WHERE origin = ? AND track_id = "
                    "(SELECT id FROM tracks WHERE path = ?)",
                    (origin, fs_key(path)),
                )
            cur = self.db.execute(
                "DELETE FROM tracks WHERE id NOT IN (SELECT track_id FROM sources) RETURNING id"
            )
            ids = [r[0] for r in cur]
            removed = len(ids)
            self.db.executemany("DELETE FROM inodes WHERE key = ?", [(file_key(i),) for i in ids])
        return removed

    def _changed(self) -> int:
        """Bump the catalog version (in the caller's transaction); returns the new one."""
        row = self.db.execute(
            "INSERT INTO meta(key, value) VALUES (?, 1) "
            "ON CONFLICT(key) DO UPDATE SET value = value + 1 RETURNING value",
            (_VERSION_KEY,),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def catalog_version(self) -> int:
        with self._lock:
            return self._meta_int(_VERSION_KEY, 0)

    def _meta_int(self, key: str, default: int) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def track(self, track_id: int) -> Track | None:
        with self._lock:
            return read_track(self.db, track_id)

    def tracks(self) -> list[Track]:
        with self._lock:
            return read_tracks(self.db)

    def tracks_for_planning(self) -> tuple[int, list[Track]]:
        """(catalog version, every track without sources) from one read transaction."""
        with self._lock, self.db:
            version = self._meta_int(_VERSION_KEY, 0)
            tracks = read_tracks_for_planning(self.db)
        return version, tracks

    def next_in_album(self, track_id: int) -> Track | None:
        """The track after ``track_id`` on its album -- disc, then track number, then path
        -- for playback prefetch; None at the album's end or for a track without one."""
        with self._lock:
            row = self.db.execute(
                f"SELECT album, {_ALBUM_ARTIST}, {_ALBUM_ORDER} FROM tracks WHERE id = ?",
                (track_id,),
            ).fetchone()
            if row is None or row[0] is None:
                return None
            following = self.db.execute(
                f"SELECT id FROM tracks WHERE album = ? AND {_ALBUM_ARTIST} IS ? "
                f"AND ({_ALBUM_ORDER}) > (?, ?, ?) ORDER BY {_ALBUM_ORDER} LIMIT 1",
                tuple(row),
            ).fetchone()
            return None if following is None else read_track(self.db, following[0])

    def track_sizes(self) -> dict[str, int]:
        with self._lock:
            return {
                fs_path(p): size for p, size in self.db.execute("SELECT path, size FROM tracks")
            }

    def track_count(self) -> int:
        with self._lock:
            row = self.db.execute("SELECT count(*) FROM tracks").fetchone()
            return int(row[0]) if row else 0

    # -- inodes ----------------------------------------------------------------------

    def inodes(self, keys: Iterable[str]) -> dict[str, int]:
        """Stable inode numbers for ``keys``, allocating new ones for keys never seen."""
        keys = list(keys)
        with self._lock, self.db:
            known = dict(self.db.execute("SELECT key, ino FROM inodes"))
            missing = [k for k in keys if k not in known]
            for key in missing:
                row = self.db.execute(
                    "INSERT INTO inodes(key) VALUES (?) RETURNING ino", (key,)
                ).fetchone()
                assert row is not None
                known[key] = row[0]
        return {k: known[k] for k in keys}

    # -- the published tree ----------------------------------------------------------

    def tree_state(self) -> TreeState:
        with self._lock:
            return self._tree_state()

    def _tree_state(self) -> TreeState:
        return read_tree_state(self.db)

    def publish_tree(
        self, rows: Iterable[TreeRow], template: str, catalog_version: int
    ) -> TreeState:
        """Make ``rows`` the served tree in one transaction, writing only what differs
        from the tree served now. A crash before the commit leaves the old tree.

        The rows go into a temporary table first and the difference is taken by SQLite
        itself: no copy of the served tree in Python, and the diff runs without the GIL."""
        with self._lock:
            self.db.execute(
                "CREATE TEMP TABLE IF NOT EXISTS new_tree(ino INTEGER PRIMARY KEY, parent, "
                "name, track_id, size, mtime_ns, subdirs); DELETE FROM temp.new_tree"
            )
            try:
                with self.db:
                    self.db.executemany(
                        "INSERT INTO temp.new_tree VALUES (?, ?, ?, ?, ?, ?, ?)", rows
                    )
                with self.db:
                    state = self._publish_new_tree(template, catalog_version)
            finally:
                self.db.execute("DELETE FROM temp.new_tree")
        return state

    def _publish_new_tree(self, template: str, catalog_version: int) -> TreeState:
        previous = self._tree_state()
        generation = previous.generation + 1
        # Files leaving the tree are noted (the search index drops them); a track that
        # comes back is a changed row again.
        self.db.execute(
            "INSERT OR REPLACE INTO tree_gone(track_id, gen) SELECT track_id, ? FROM tree "
            "WHERE track_id IS NOT NULL AND track_id NOT IN "
            "(SELECT track_id FROM temp.new_tree WHERE track_id IS NOT NULL)",
            (generation,),
        )
        gone = self.db.changes()
        # A name may move from one inode to another in the same publish (a collision
        # renumbered): every changed row is taken out before the new ones go in.
        self.db.execute(
            "DELETE FROM tree WHERE ino NOT IN (SELECT ino FROM temp.new_tree) "
            "OR ino IN (SELECT n.ino FROM temp.new_tree n JOIN tree t ON t.ino = n.ino "
            "WHERE (t.parent, t.name, t.track_id, t.size, t.mtime_ns, t.subdirs) IS NOT "
            "(n.parent, n.name, n.track_id, n.size, n.mtime_ns, n.subdirs))"
        )
        self.db.execute(
            "INSERT INTO tree(ino, parent, name, track_id, size, mtime_ns, subdirs, gen) "
            "SELECT n.*, ? FROM temp.new_tree n WHERE n.ino NOT IN (SELECT ino FROM tree)",
            (generation,),
        )
        written = self.db.changes()
        self.db.execute(
            "DELETE FROM tree_gone WHERE track_id IN (SELECT track_id FROM tree WHERE gen = ?)",
            (generation,),
        )
        fail_point("tree.publish")
        row = self.db.execute(
            "SELECT count(*), count(track_id), coalesce(sum(size), 0) FROM temp.new_tree"
        ).fetchone()
        assert row is not None
        nodes, files, total = (int(v) for v in row)
        state = TreeState(
            generation=generation,
            files=files,
            total_bytes=total,
            nodes=nodes,
            template=template,
            catalog_version=catalog_version,
            catalog_id=previous.catalog_id,
        )
        values = {
            "tree_generation": state.generation,
            "tree_files": state.files,
            "tree_bytes": state.total_bytes,
            "tree_nodes": state.nodes,
            "tree_template": state.template,
            "tree_catalog_version": state.catalog_version,
        }
        self.db.executemany(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(values.items())
        )
        log.debug("tree: %d files left, %d rows written", gone, written)
        return state

    # -- sync bookkeeping --------------------------------------------------------------

    def reread_untagged_once(self, reason: str) -> int:
        """Once per ``reason`` (a newer tag reader): make the next sync read again the
        tags of tracks that have none to name them by, by forgetting their sources'
        mtimes. Their path, size and mtime -- hence their cache keys -- stay as they were.
        Returns how many tracks that marked."""
        key = f"reread.{reason}"
        with self._lock, self.db:
            if self.db.execute("SELECT 1 FROM sync_state WHERE key = ?", (key,)).fetchone():
                return 0
            cur = self.db.execute(
                "UPDATE sources SET mtime_ns = -1 WHERE track_id IN (SELECT id FROM tracks "
                "WHERE title IS NULL AND artist IS NULL AND albumartist IS NULL "
                "AND album IS NULL) RETURNING track_id"
            )
            marked = len({row[0] for row in cur})
            self.db.execute("INSERT INTO sync_state(key, value) VALUES (?, '1')", (key,))
        return marked

    def get_state(self, key: str) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT value FROM sync_state WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

    def set_state(self, key: str, value: str | None) -> None:
        with self._lock, self.db:
            if value is None:
                self.db.execute("DELETE FROM sync_state WHERE key = ?", (key,))
            else:
                self.db.execute(
                    "INSERT OR REPLACE INTO sync_state(key, value) VALUES (?, ?)", (key, value)
                )

    # -- pins ----------------------------------------------------------------------------

    def pins(self) -> list[tuple[int, str, str, int]]:
        """Every pin as (id, kind, text, created_at), oldest first."""
        with self._lock:
            rows = self.db.execute("SELECT id, kind, text, created_at FROM pins ORDER BY id")
            return [(int(i), str(k), str(t), int(c)) for i, k, t, c in rows]

    def add_pin(self, kind: str, text: str) -> tuple[int, bool]:
        """Store a pin; (its id, whether it is new)."""
        with self._lock, self.db:
            row = self.db.execute(
                "SELECT id FROM pins WHERE kind = ? AND text = ?", (kind, text)
            ).fetchone()
            new = row is None
            if new:
                row = self.db.execute(
                    "INSERT INTO pins(kind, text, created_at) VALUES (?, ?, ?) RETURNING id",
                    (kind, text, int(time.time())),
                ).fetchone()
        assert row is not None
        return int(row[0]), new

    def remove_pin(self, kind: str, text: str) -> bool:
        with self._lock, self.db:
            row = self.db.execute(
                "DELETE FROM pins WHERE kind = ? AND text = ? RETURNING id", (kind, text)
            ).fetchone()
        return row is not None


# Tag values many tracks share (an album's ten tracks, an artist's hundred): one string
# each when a whole catalog is read for planning.
_SHARED_TAGS = ("artist", "albumartist", "album", "genre")


def _track_of(row: Sequence[Any], sources: Iterable[Source], *, share: bool = False) -> Track:
    """A track from a ``tracks`` row (id, path, size, mtime_ns, etag, tags..., tag_error);
    ``share``: one string object for equal shared tag values."""
    tag_values = dict(zip(_TAG_COLUMNS, row[5:-1], strict=True))
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


_TRACK_SELECT = f"SELECT id, path, size, mtime_ns, etag, {', '.join(_TAG_COLUMNS)}, tag_error "


_ALBUM_ARTIST = "coalesce(albumartist, artist)"
_ALBUM_ORDER = "coalesce(disc, 1), coalesce(track, 0), path"


def read_tree_state(db: apsw.Connection) -> TreeState:
    """The published tree's state (``db``: the catalog's, or a reader's connection)."""
    values = dict(
        db.execute(
            f"SELECT key, value FROM meta WHERE key IN ({', '.join('?' * len(_TREE_KEYS))})",
            _TREE_KEYS,
        )
    )
    if "tree_generation" not in values:
        return TreeState(catalog_id=str(values.get("catalog_id", "")))
    return TreeState(
        generation=int(values["tree_generation"]),
        files=int(values["tree_files"]),
        total_bytes=int(values["tree_bytes"]),
        nodes=int(values["tree_nodes"]),
        template=str(values["tree_template"]),
        catalog_version=int(values.get("tree_catalog_version", -1)),
        catalog_id=str(values.get("catalog_id", "")),
    )


def read_track(db: apsw.Connection, track_id: int) -> Track | None:
    """One track with its sources (``db``: the catalog's, or a reader's connection)."""
    row = db.execute(_TRACK_SELECT + "FROM tracks WHERE id = ?", (track_id,)).fetchone()
    if row is None:
        return None
    sources = [
        Source(origin, size, mtime, etag)
        for origin, size, mtime, etag in db.execute(
            "SELECT origin, size, mtime_ns, etag FROM sources WHERE track_id = ?", (track_id,)
        )
    ]
    return _track_of(row, sources)


def read_tree_files(db: apsw.Connection) -> Iterator[tuple[TreeRow, Track]]:
    """Every file of the published tree with its track and sources, in track id order,
    streamed (two cursors merged: nothing of the whole catalog is held at once)."""
    sources = db.cursor().execute(
        "SELECT track_id, origin, size, mtime_ns, etag FROM sources ORDER BY track_id"
    )
    pending = next(sources, None)
    track_columns = ", ".join(f"k.{c}" for c in _TRACK_SELECT.split(None, 1)[1].split(", "))
    for row in db.cursor().execute(
        "SELECT t.ino, t.parent, t.name, t.track_id, t.size, t.mtime_ns, t.subdirs, "
        f"{track_columns} FROM tree t JOIN tracks k ON k.id = t.track_id ORDER BY k.id"
    ):
        track_id = row[3]
        found = []
        while pending is not None and pending[0] <= track_id:
            if pending[0] == track_id:
                found.append(Source(*pending[1:]))
            pending = next(sources, None)
        yield row[:7], _track_of(row[7:], found)


def read_tracks_for_planning(db: apsw.Connection) -> list[Track]:
    """Every track without its sources (naming needs none), by path: at 100,000 tracks
    about a third less memory than ``read_tracks``."""
    return [
        _track_of(row, (), share=True)
        for row in db.execute(_TRACK_SELECT + "FROM tracks ORDER BY path")
    ]


def read_tracks(db: apsw.Connection) -> list[Track]:
    """Every track with its sources, by path."""
    sources: dict[int, list[Source]] = {}
    for track_id, origin, size, mtime, etag in db.execute(
        "SELECT track_id, origin, size, mtime_ns, etag FROM sources"
    ):
        sources.setdefault(track_id, []).append(Source(origin, size, mtime, etag))
    return [
        _track_of(row, sources.get(row[0], ()))
        for row in db.execute(_TRACK_SELECT + "FROM tracks ORDER BY path")
    ]
