"""The daemon's stores at start-up: the catalog and the chunk cache opened side by side,
and the catalog check that a clean restart defers until the mount answers."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from musicfs.cache.reader import CachingReader
from musicfs.catalog import clean_close
from musicfs.catalog.db import Catalog
from musicfs.catalog.integrity import check_catalog, open_catalog
from musicfs.catalog.schema import SchemaTooNew
from musicfs.origins.pool import OriginPool
from musicfs.service.startup import StartupError, catalogued_by, refuse_missing_origins

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenedCatalog:
    catalog: Catalog
    moved_aside: Path | None  # where a corrupt catalog went (a new one was started)
    # A clean close left the file untouched: not checked yet, checked after the mount.
    check_after_mount: bool


async def open_stores(
    catalog_path: Path, reader: CachingReader, pool: OriginPool, *, first_run: bool
) -> OpenedCatalog:
    """Open the cache (``reader``) and the catalog; on a catalog that exists, refuse a
    missing local origin it holds nothing from (``refuse_missing_origins``).

    The catalog's check (it reads every page) and the cache's start-up repair need
    nothing of each other: side by side, the mount answers sooner. Their errors are
    raised after the nursery, as they are (not in an exception group); the reader is
    closed then."""
    failed: list[Exception] = []
    opened: OpenedCatalog | None = None

    async def open_cache() -> None:
        try:
            await reader.open()  # a bad cache means passthrough, not exit
        except Exception as exc:
            failed.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_cache)
        try:
            opened = await trio.to_thread.run_sync(_open_catalog, catalog_path)
            if not first_run:
                catalog = opened.catalog
                try:
                    await catalog.run(refuse_missing_origins, pool, catalogued_by(catalog))
                except StartupError:
                    catalog.close()
                    raise
        except SchemaTooNew as exc:
            failed.insert(0, StartupError(str(exc)))
        except Exception as exc:
            failed.insert(0, exc)
    if failed:
        with trio.CancelScope(shield=True):
            await reader.aclose()
        raise failed[0]
    assert opened is not None
    return opened


def _open_catalog(path: Path) -> OpenedCatalog:
    """The catalog, checked now unless a clean close left it untouched."""
    trusted = clean_close.take(path)
    catalog, moved = open_catalog(path, check=not trusted)
    return OpenedCatalog(catalog, moved, check_after_mount=trusted and moved is None)


async def check_after_mount(path: Path) -> bool:
    """The quick_check a clean restart skipped before mounting; True if it passed. Damage
    found now is repaired at the next start (no stamp is left: it checks before
    mounting)."""
    started = time.monotonic()
    problems = await trio.to_thread.run_sync(
        lambda: check_catalog(path, full=False), abandon_on_cancel=True
    )
    if problems:
        log.error(
            "catalog %s: quick_check after the mount: %s; it is moved aside and rebuilt "
            "at the next start",
            path,
            "; ".join(problems[:3]),
        )
        return False
    log.info("catalog %s: checked after the mount in %.1fs", path, time.monotonic() - started)
    return True
