"""A real ``ChunkStore`` whose filesystem primitives can be told to fail, and a real local
origin of random-content tracks to read through it."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from musicfs.cache.disk import CacheDisk
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


class FaultyDisk(CacheDisk):
    """The production filesystem layer, but each named primitive can be told to fail."""

    def __init__(self, root: Path, *, quarantine_keep: int, used: Callable[[], int]):
        super().__init__(root, quarantine_keep=quarantine_keep)
        self.faults: dict[str, _Fault] = {}
        self.free: tuple[int, int] | None = None  # (free bytes, store size) when set
        self.corrupt_reads = False
        self.calls: dict[str, int] = {}
        self._used = used
        self._lock = threading.Lock()

    def _hit(self, op: str) -> None:
        with self._lock:  # a batch's fsyncs run on several threads at once
            self.calls[op] = self.calls.get(op, 0) + 1
            fault = self.faults.get(op)
            if fault is None or (fault.times is not None and fault.fired >= fault.times):
                return
            fault.fired += 1
        raise OSError(fault.err, f"FaultyStore: {op}: {os.strerror(fault.err)}")

    def open_temp(self) -> tuple[int, Path]:
        self._hit("open_temp")
        return super().open_temp()

    def write_all(self, fd: int, data: bytes | memoryview) -> None:
        self._hit("write")
        super().write_all(fd, data)

    def fsync(self, fd: int) -> None:
        self._hit("fsync")
        super().fsync(fd)

    def rename(self, src: Path, dst: Path) -> None:
        self._hit("rename")
        super().rename(src, dst)

    def fsync_dir(self, path: Path) -> None:
        self._hit("fsync_dir")
        super().fsync_dir(path)

    def unlink(self, path: Path) -> None:
        self._hit("unlink")
        super().unlink(path)

    def read_file(self, path: Path, limit: int) -> bytes:
        self._hit("read")
        data = super().read_file(path, limit)
        if self.corrupt_reads and len(data) > 100:
            flipped = bytearray(data)
            flipped[-1] ^= 0x01
            return bytes(flipped)
        return data

    def free_bytes(self) -> int:
        if self.free is not None:
            free, used_then = self.free
            return max(0, free + used_then - self._used())
        return super().free_bytes()


class FaultyStore(ChunkStore):
    """Everything but the filesystem primitives is the production store.

    ``fail(op, errno)`` makes ``op`` (one of ``OPS``) raise ``OSError(errno)``;
    ``free_bytes = N`` makes statvfs report N bytes free now, then more or less as the
    store's own chunks shrink or grow (a disk someone else filled);
    ``corrupt_reads`` flips a bit in every chunk file read (a rotting disk).
    """

    disk: FaultyDisk

    def _make_disk(self, root: Path, quarantine_keep: int) -> CacheDisk:
        return FaultyDisk(root, quarantine_keep=quarantine_keep, used=lambda: self.used)

    def fail(self, op: str, err: int, times: int | None = None) -> None:
        assert op in OPS, op
        self.disk.faults[op] = _Fault(err, times)

    @property
    def calls(self) -> dict[str, int]:
        return self.disk.calls

    @property
    def corrupt_reads(self) -> bool:
        return self.disk.corrupt_reads

    @corrupt_reads.setter
    def corrupt_reads(self, value: bool) -> None:
        self.disk.corrupt_reads = value

    @property
    def free_bytes(self) -> int | None:
        return None if self.disk.free is None else self.disk.free_bytes()

    @free_bytes.setter
    def free_bytes(self, value: int | None) -> None:
        self.disk.free = None if value is None else (value, self.used)

    def heal(self) -> None:
        self.disk.faults.clear()
        self.disk.free = None
        self.disk.corrupt_reads = False


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
