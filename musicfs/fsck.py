"""``musicfs fsck``: the thorough checks start-up skips for speed. Reports, changes nothing.

Start-up runs SQLite's ``quick_check`` on the catalog; fsck runs the full
``integrity_check``. Exit status 0 when everything is sound, 1 when something is not.
"""

from __future__ import annotations

import sys

from musicfs.catalog.integrity import check_catalog
from musicfs.config import Settings


def fsck_catalog(settings: Settings) -> list[str]:
    return [f"catalog {settings.catalog_path}: {p}" for p in check_catalog(settings.catalog_path)]


def run_fsck(settings: Settings) -> int:
    problems = fsck_catalog(settings)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"catalog {settings.catalog_path}: ok")
    return 1 if problems else 0
