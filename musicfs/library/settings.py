"""The library's settings (``[library]``: how tracks are named, how often and how widely
the origins are synced), apart from the library so that reading a config does not import
the catalog or the sync."""

from __future__ import annotations

from dataclasses import dataclass

from musicfs.catalog.naming import DEFAULT_TEMPLATE


@dataclass(frozen=True)
class LibrarySettings:
    template: str = DEFAULT_TEMPLATE
    scan_interval: float = 3600.0  # seconds between background syncs; 0 turns them off
    scan_parallel: int = 4
    # Files per catalog commit: a crash mid-sync loses at most one batch of work.
    scan_batch: int = 200
