"""Start-up integrity of the catalog: check it, and never let a broken one stop the daemon.

The catalog is derived data (the origins are the truth), so a corrupt or unreadable
catalog is moved aside -- kept for a post-mortem, with a timestamp -- and a fresh one is
rebuilt by the next sync. A catalog written by a newer MusicFS is the one case that stops
start-up: rebuilding it would silently throw away whatever that version knew.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import apsw

from musicfs.catalog.db import Catalog, CatalogCorrupt, SchemaTooNew

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


def _open_checked(path: Path) -> Catalog:
    catalog = Catalog(path)
    try:
        problems = catalog.check(full=False)
    except BaseException:
        catalog.close()
        raise
    if problems:
        catalog.close()
        raise CatalogCorrupt(f"{path}: quick_check: {'; '.join(problems[:3])}")
    return catalog


def open_catalog(path: Path) -> tuple[Catalog, Path | None]:
    """Open the catalog after SQLite's ``quick_check``. A corrupt or unreadable one is moved
    aside and replaced by an empty catalog; returns (catalog, where the old one went).
    Raises ``SchemaTooNew`` (a newer MusicFS wrote it) -- refusing is the only safe answer."""
    try:
        return _open_checked(path), None
    except SchemaTooNew:
        raise
    except (CatalogCorrupt, apsw.Error, OSError) as exc:
        if isinstance(exc, OSError) and not path.exists():
            raise
        moved = move_aside(path, str(exc))
    return Catalog(path), moved


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
