"""Start-up checks that decide whether the daemon may start at all."""

from __future__ import annotations

import errno
from collections.abc import Callable

from musicfs.catalog.db import Catalog
from musicfs.library.sync import identity_key, origin_identity
from musicfs.origins.local import LocalOrigin
from musicfs.origins.pool import OriginPool


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


def catalogued_by(catalog: Catalog) -> Callable[[LocalOrigin], bool]:
    """Does the catalog hold tracks listed from this very origin (same name and root)?"""

    def catalogued_from(origin: LocalOrigin) -> bool:
        recorded = catalog.get_state(identity_key(origin.name))
        if recorded is None:  # listed before identities were kept, or never listed
            return bool(catalog.known_sources(origin.name))
        return recorded == origin_identity(origin)

    return catalogued_from


def refuse_missing_origins(
    pool: OriginPool, catalogued_from: Callable[[LocalOrigin], bool]
) -> None:
    """A local origin folder that does not exist, or is a file, is a mistake in the
    command line or config -- unless the catalog holds tracks from that very folder (then
    it is a disk not mounted today: the offline case, served from the catalog and cache)."""
    for origin in pool:
        if not isinstance(origin, LocalOrigin):
            continue  # a server that does not answer yet is the offline case
        problem = origin.root_problem()
        if problem is not None and not catalogued_from(origin):
            code = errno.errorcode.get(problem.errno or 0, "?")
            raise StartupError(
                f"origin {origin.name} ({origin.root}): {problem.strerror} ({code}); "
                "nothing is catalogued from there, so this is a wrong --origin or "
                "[[origin]] url"
            )
