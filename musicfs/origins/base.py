"""The origin protocol: the only seam through which MusicFS touches stored music.

Paths are POSIX-style, relative to the origin root, without a leading slash, decoded with
``surrogateescape`` so that non-UTF-8 names survive a round trip.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class OriginEntry:
    path: str
    size: int
    mtime_ns: int
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class Listing:
    """A finished listing. ``gaps`` are folders that could not be read: whatever the catalog
    holds under them is unknown, not deleted."""

    entries: list[OriginEntry]
    gaps: tuple[str, ...] = ()


class OriginError(OSError):
    """An origin operation failed. ``errno`` is what a FUSE reader should see.

    ``origin_wide`` marks errors about the origin as a whole (wrong credentials, a refused
    host key) whose errno would otherwise read like a problem with one file (EACCES)."""

    def __init__(
        self,
        err: int,
        message: str,
        *,
        origin: str,
        path: str | None = None,
        origin_wide: bool = False,
    ):
        super().__init__(err, message)
        self.origin = origin
        self.path = path
        self.origin_wide = origin_wide

    def __str__(self) -> str:
        where = f"origin={self.origin}"
        if self.path is not None:
            where += f" path={self.path!r}"
        name = errno.errorcode.get(self.errno or 0, str(self.errno))
        return f"{self.strerror} ({where} errno={name})"


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.ENOENT


@runtime_checkable
class Origin(Protocol):
    """What every origin answers. All methods are trio-async and must not block the loop."""

    @property
    def name(self) -> str: ...

    @property
    def display_url(self) -> str:
        """The origin's address for logs and status: never contains a secret."""
        ...

    async def list(self) -> Listing:
        """Every file under the root. Raises ``OriginError`` if the listing could not finish."""
        ...

    async def stat(self, path: str) -> OriginEntry: ...

    async def read(self, path: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``; shorter only at end of file."""
        ...

    async def check(self) -> None:
        """Raise ``OriginError`` if the origin cannot serve right now."""
        ...

    async def aclose(self) -> None: ...
