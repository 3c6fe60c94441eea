"""The SQLite catalog (through apsw): one file, its connections, lock and transactions.

The catalog is the source of truth for which tracks exist and what they are called. It is
only touched from worker threads (``Catalog.run``), never from the trio loop itself --
except for the read-only connection the served tree queries (``reader``).

``Catalog`` holds the lock and opens the transactions; the SQL of each table is written
once, in its module: the schema and migrations (``schema``), tracks and their sources
(``track_table``), the published tree (``published_tree``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import apsw
import trio

from musicfs.catalog import published_tree, schema, track_table
from musicfs.catalog.model import Track
from musicfs.catalog.published_tree import TreeState
from musicfs.catalog.schema import MIGRATIONS, CatalogCorrupt
from musicfs.catalog.track_table import Listed, Scanned
from musicfs.catalog.tree import TreeRow
from musicfs.failpoints import fail_point

T = TypeVar("T")

# SQLite's page cache of the read connection, in KiB: the tree table and its index of
# 100,000 tracks take about 15 MB of pages.
READ_CACHE_KIB = 16 * 1024

# Bumped in the transaction of every change to tracks or sources: a tree published from
# catalog version N is current while the catalog is still at N (a restart needs no new
# tree).
_VERSION_KEY = "catalog_version"


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
            schema.migrate(self.db, path, migrations)
        except (apsw.CorruptError, apsw.NotADBError) as exc:
            raise CatalogCorrupt(f"{path}: {exc}") from exc

    # -- lifecycle -------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._lock:
            return schema.schema_version(self.db)

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
            return track_table.known_sources(self.db, origin)

    def upsert(self, origin: str, batch: Iterable[Scanned]) -> None:
        """Record one batch of scanned files in one transaction.

        Each item is (path, size, mtime_ns, etag, tags, tag_error). The track's own
        size/mtime/tags follow the origin that last (re)scanned it.
        """
        now = time.time_ns()
        fail_point("catalog.upsert")
        with self._lock, self.db:
            track_table.upsert_tracks(self.db, origin, batch, version=self._changed(), now=now)

    def add_source(self, origin: str, batch: Iterable[Listed]) -> None:
        """Record that ``origin`` also holds these already-catalogued files."""
        with self._lock, self.db:
            self._changed()
            track_table.add_sources(self.db, origin, batch)

    def remove_sources(self, origin: str, paths: Iterable[str]) -> int:
        """Forget ``origin``'s copies of ``paths``; tracks left with no copy are removed."""
        with self._lock, self.db:
            self._changed()
            removed = track_table.remove_sources(self.db, origin, paths)
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
            return track_table.read_track(self.db, track_id)

    def tracks(self) -> list[Track]:
        with self._lock:
            return track_table.read_tracks(self.db)

    def tracks_for_planning(self) -> tuple[int, list[Track]]:
        """(catalog version, every track without sources) from one read transaction."""
        with self._lock, self.db:
            version = self._meta_int(_VERSION_KEY, 0)
            planned = track_table.read_tracks_for_planning(self.db)
        return version, planned

    def next_in_album(self, track_id: int) -> Track | None:
        """The track after ``track_id`` on its album, for playback prefetch."""
        with self._lock:
            return track_table.next_in_album(self.db, track_id)

    def track_sizes(self) -> dict[str, int]:
        with self._lock:
            return track_table.track_sizes(self.db)

    def track_count(self) -> int:
        with self._lock:
            return track_table.track_count(self.db)

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
            return published_tree.read_tree_state(self.db)

    def publish_tree(
        self, rows: Iterable[TreeRow], template: str, catalog_version: int
    ) -> TreeState:
        """Make ``rows`` the served tree in one transaction, writing only what differs
        from the tree served now. A crash before the commit leaves the old tree."""
        with self._lock:
            return published_tree.publish(self.db, rows, template, catalog_version)

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
            marked = track_table.forget_untagged_mtimes(self.db)
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
