"""Start-up integrity of the catalog: check it, and never let a broken one stop the daemon.

The catalog is derived data (the origins are the truth), so a corrupt or unreadable
catalog is moved aside -- kept for a post-mortem, with a timestamp -- and a fresh one is
rebuilt by the next sync. Meanwhile the rows that can still be read from the old file are
salvaged into the new one, so that the library (and whatever the chunk cache holds of it)
stays available even while the origins are unreachable; every salvaged source is marked
for re-scanning, so the next sync re-reads what a damaged page might have garbled.
A catalog written by a newer MusicFS is the one case that stops start-up: rebuilding it
would silently throw away whatever that version knew.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import apsw

from musicfs.catalog.db import Catalog
from musicfs.catalog.schema import CatalogCorrupt, SchemaTooNew

log = logging.getLogger(__name__)

# SQLite's own files next to the database.
_COMPANIONS = ("-wal", "-shm", "-journal")


def move_aside(path: Path, reason: str) -> Path:
    """Rename ``path`` (and its WAL/SHM files) to ``<name>.corrupt-<timestamp>``."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("", *_COMPANIONS):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.rename(src, f"{target}{suffix}")
    log.error(
        "catalog %s is unusable (%s): moved aside to %s; rebuilding it from the origins",
        path,
        reason,
        target,
    )
    return target


def _open_checked(path: Path, check: bool) -> Catalog:
    catalog = Catalog(path)
    if not check:
        return catalog
    try:
        problems = catalog.check(full=False)
    except BaseException:
        catalog.close()
        raise
    if problems:
        catalog.close()
        raise CatalogCorrupt(f"{path}: quick_check: {'; '.join(problems[:3])}")
    return catalog


def open_catalog(path: Path, *, check: bool = True) -> tuple[Catalog, Path | None]:
    """Open the catalog after SQLite's ``quick_check`` (unless not ``check``: the caller
    checks it later, ``check_catalog``). A corrupt or unreadable one is moved aside and
    replaced by an empty catalog; returns (catalog, where the old one went). Raises
    ``SchemaTooNew`` (a newer MusicFS wrote it) -- refusing is the only safe answer."""
    try:
        return _open_checked(path, check), None
    except SchemaTooNew:
        raise
    except (CatalogCorrupt, apsw.Error, OSError) as exc:
        if isinstance(exc, OSError) and not path.exists():
            raise
        moved = move_aside(path, str(exc))
    catalog = Catalog(path)
    try:
        counts = salvage(moved, catalog)
    except Exception as exc:  # best effort: an empty catalog is still a working one
        log.warning("catalog %s: nothing salvaged (%s)", moved, exc)
    else:
        log.warning(
            "catalog %s: salvaged %d tracks, %d sources, %d inode numbers, %d pins from the old "
            "file; the next sync re-reads them",
            path,
            counts["tracks"],
            counts["sources"],
            counts["inodes"],
            counts["pins"],
        )
    return catalog, moved


# Rows are read in rowid order, a batch at a time. Where a read hits a damaged page, the
# scan steps over doubling rowid ranges until it reads again: the rows on that page are
# lost, the rest are kept.
_SALVAGE_BATCH = 500
_SALVAGE_TABLES = (("tracks", "id"), ("sources", "rowid"), ("inodes", "ino"), ("pins", "id"))


def _readable_rows(db: apsw.Connection, table: str, key: str) -> list[tuple[object, ...]]:
    query = f"SELECT {key}, * FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT ?"
    try:
        row = db.execute(f"SELECT max({key}) FROM {table}").fetchone()
        top = int(row[0] or 0) if row is not None else 0
    except apsw.Error:
        top = 2**40
    rows: list[tuple[object, ...]] = []
    last, step, batch_size = 0, 1, _SALVAGE_BATCH  # our rowids start at 1
    while last < top or batch_size == _SALVAGE_BATCH:
        try:
            batch = db.execute(query, (last, batch_size)).fetchall()
        except apsw.Error:
            if batch_size > 1:
                batch_size = 1  # find the damaged row one at a time
            else:
                last, step = last + step, step * 2
            continue
        if not batch:
            break
        rows.extend(tuple(r[1:]) for r in batch)
        last, step, batch_size = int(batch[-1][0]), 1, _SALVAGE_BATCH  # type: ignore[arg-type]
    return rows


def salvage(old: Path, catalog: Catalog) -> dict[str, int]:
    """Copy the rows still readable in ``old`` into the fresh ``catalog``."""
    counts = {"tracks": 0, "sources": 0, "inodes": 0, "pins": 0}
    db = apsw.Connection(str(old), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        version = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if version is None or int(version[0]) != catalog.schema_version():
            raise CatalogCorrupt(f"schema version {version} cannot be salvaged")
        found = {table: _readable_rows(db, table, key) for table, key in _SALVAGE_TABLES}
    finally:
        db.close()
    with catalog._lock, catalog.db:
        track_ids = set()
        for row in found["tracks"]:
            catalog.db.execute(
                f"INSERT OR IGNORE INTO tracks VALUES ({', '.join('?' for _ in row)})", row
            )
            track_ids.add(row[0])
        for row in found["sources"]:
            if row[0] in track_ids:
                # mtime -1: differs from any listing, so the next sync re-reads the tags.
                catalog.db.execute(
                    "INSERT OR IGNORE INTO sources VALUES (?, ?, ?, -1, ?)",
                    (row[0], row[1], row[2], row[4]),
                )
                counts["sources"] += 1
        for ino, key in found["inodes"]:
            catalog.db.execute("INSERT OR IGNORE INTO inodes(ino, key) VALUES (?, ?)", (ino, key))
            counts["inodes"] += 1
        for row in found["pins"]:  # what the user asked to keep offline is kept asking
            catalog.db.execute("INSERT OR IGNORE INTO pins VALUES (?, ?, ?, ?)", row)
            counts["pins"] += 1
        counts["tracks"] = len(track_ids)
    return counts


def check_catalog(path: Path, *, full: bool = True) -> list[str]:
    """Problems in the catalog at ``path`` (SQLite ``integrity_check`` when ``full``), for
    ``musicfs fsck``. Never changes the file."""
    if not path.exists():
        return []
    try:
        db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error as exc:
        return [f"cannot open: {exc}"]
    try:
        pragma = "integrity_check" if full else "quick_check"
        rows = [str(r[0]) for r in db.execute(f"PRAGMA {pragma}")]
        version = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except apsw.Error as exc:
        return [str(exc)]
    finally:
        db.close()
    problems = [] if rows == ["ok"] else rows
    if version is None:
        problems.append("no schema version recorded")
    return problems
