"""A real ``ChunkStore`` whose filesystem primitives can be told to fail, and a real local
origin of random-content tracks to read through it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from musicfs.cache.store import ChunkStore
from musicfs.catalog.model import Source, Track
from musicfs.catalog.tags import Tags
from musicfs.origins.local import LocalOrigin
from musicfs.origins.pool import OriginPool

OPS = ("open_temp", "write", "fsync", "rename", "fsync_dir", "unlink", "read")


@dataclass
class _Fault:
    err: int
    times: int | None  # None: until healed
    fired: int = 0


class FaultyStore(ChunkStore):
    """Everything but the named primitives is the production store.

    ``fail(op, errno)`` makes ``op`` (one of ``OPS``) raise ``OSError(errno)``;
    ``free_bytes = N`` makes statvfs report N bytes free now, then more or less as the
    store's own chunks shrink or grow (a disk someone else filled);
    ``corrupt_reads`` flips a bit in every chunk file read (a rotting disk).
    """

    def __init__(self, root: Path, **kwargs: int):
        super().__init__(root, **kwargs)
        self.faults: dict[str, _Fault] = {}
        self._free: tuple[int, int] | None = None  # (free bytes, store size) when set
        self.corrupt_reads = False
        self.calls: dict[str, int] = {}

    def fail(self, op: str, err: int, times: int | None = None) -> None:
        assert op in OPS, op
        self.faults[op] = _Fault(err, times)

    @property
    def free_bytes(self) -> int | None:
        return None if self._free is None else self._free_bytes()

    @free_bytes.setter
    def free_bytes(self, value: int | None) -> None:
        self._free = None if value is None else (value, self.used)

    def heal(self) -> None:
        self.faults.clear()
        self._free = None
        self.corrupt_reads = False

    def _hit(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        fault = self.faults.get(op)
        if fault is None or (fault.times is not None and fault.fired >= fault.times):
            return
        fault.fired += 1
        raise OSError(fault.err, f"FaultyStore: {op}: {os.strerror(fault.err)}")

    def _open_temp(self) -> tuple[int, Path]:
        self._hit("open_temp")
        return super()._open_temp()

    def _write_all(self, fd: int, data: bytes | memoryview) -> None:
        self._hit("write")
        super()._write_all(fd, data)

    def _fsync(self, fd: int) -> None:
        self._hit("fsync")
        super()._fsync(fd)

    def _rename(self, src: Path, dst: Path) -> None:
        self._hit("rename")
        super()._rename(src, dst)

    def _fsync_dir(self, path: Path) -> None:
        self._hit("fsync_dir")
        super()._fsync_dir(path)

    def _unlink(self, path: Path) -> None:
        self._hit("unlink")
        super()._unlink(path)

    def _read_file(self, path: Path, limit: int) -> bytes:
        self._hit("read")
        data = super()._read_file(path, limit)
        if self.corrupt_reads and len(data) > 100:
            flipped = bytearray(data)
            flipped[-1] ^= 0x01
            return bytes(flipped)
        return data

    def _free_bytes(self) -> int:
        if self._free is not None:
            free, used_then = self._free
            return max(0, free + used_then - self.used)
        return super()._free_bytes()


def noise(n: int, seed: str) -> bytes:
    """Deterministic, incompressible, chunk-distinct bytes."""
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += hashlib.shake_256(block).digest(4096)
    return bytes(out[:n])


@dataclass
class TrackOrigin:
    """Tracks of random bytes in a folder, served by the real ``LocalOrigin`` through the
    real ``OriginPool``. ``fetches`` records every origin read ``(path, offset, length)``."""

    root: Path
    tracks: dict[str, Track] = field(default_factory=dict)
    content: dict[str, bytes] = field(default_factory=dict)
    fetches: list[tuple[str, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.pool = OriginPool([LocalOrigin("local", self.root)])

    def add(self, name: str, size: int) -> Track:
        data = noise(size, name)
        path = self.root / name
        path.write_bytes(data)
        st = path.stat()
        track = Track(
            id=len(self.tracks) + 1,
            path=name,
            size=size,
            mtime_ns=st.st_mtime_ns,
            etag=None,
            tags=Tags(title=name),
            sources=(Source("local", size, st.st_mtime_ns, None),),
        )
        self.tracks[name] = track
        self.content[name] = data
        return track

    def add_many(self, sizes: Iterable[int]) -> list[Track]:
        return [self.add(f"t{i}.flac", size) for i, size in enumerate(sizes)]

    async def fetch(self, track: Track, offset: int, length: int) -> bytes:
        self.fetches.append((track.path, offset, length))
        return await self.pool.read(track, offset, length)
