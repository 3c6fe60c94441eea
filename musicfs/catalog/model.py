"""Plain records shared by the catalog, the tree and the reader."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from musicfs.catalog.tags import Tags


@dataclass(frozen=True, slots=True)
class Source:
    """One origin's copy of a track."""

    origin: str
    size: int
    mtime_ns: int
    etag: str | None


@dataclass(frozen=True, slots=True)
class Track:
    id: int
    path: str  # relative to every origin root; surrogateescape-decoded
    size: int
    mtime_ns: int
    etag: str | None
    tags: Tags
    tag_error: str | None = None
    sources: tuple[Source, ...] = field(default=())

    @property
    def version_key(self) -> bytes:
        """Identifies this exact content independently of which origin serves it: the
        chunk cache is keyed by it, so a mirror can serve a version cached from another."""
        h = hashlib.blake2b(digest_size=16)
        h.update(self.path.encode("utf-8", "surrogateescape"))
        h.update(b"\0%d\0%d\0" % (self.size, self.mtime_ns))
        h.update((self.etag or "").encode())
        return h.digest()
