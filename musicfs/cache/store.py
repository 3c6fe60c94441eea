"""The content-addressed chunk store: chunk files named by their hash, an LMDB index, size
limits with LRU eviction, start-up repair, and the modes a sick cache disk puts it in.

Layout under the cache directory::

    chunks/ab/ab12...ef   one file per chunk, named by the BLAKE2b-256 of its payload
    tmp/                  chunks being written; anything here at start-up is a crash leftover
    quarantine/           the newest few chunk files that failed verification, for forensics
    index/                the LMDB environment (see ``index.py``)
    lock                  one process per cache directory

A chunk file is a 56-byte header -- magic, file version, byte offset, payload length and a
checksum of those -- followed by the payload. The header is what lets a lost index be
rebuilt from the files: the hash proves the payload, the header says where it belongs.

Why these choices:

* **1 MiB chunks** (``cache.chunk_size``). Music files are 3-50 MB, so a track is a few to
  a few dozen chunks: few enough files and index records (10 GB = 10k files, a 2 MB
  index) that start-up repair and eviction stay cheap, and one origin request per chunk
  amortises an SFTP/S3 round trip (tens of ms) over enough bytes to reach link speed. A
  seek wastes at most one chunk of transfer, and a miss costs one chunk before its first
  byte (about 0.1 s at 10 MB/s). FUSE reads arrive in 128 KiB pieces; the reader keeps
  recently verified chunks in memory so a chunk is read and hashed once, not 8 times.
* **BLAKE2b-256** from ``hashlib``: in the standard library (no extra dependency in Debian,
  Nix or CI), releases the GIL while hashing so verification in worker threads runs next
  to the trio loop, and hashes ~1.3 GB/s on one core here -- 0.7 ms per chunk, once per
  chunk read from disk. (The ``blake3`` package measured 0.1 ms per MiB on this machine;
  it would be the upgrade if verification ever showed up in a profile.)
* **one fan-out level of 256 folders**: a million chunks (1 TB) is ~4k entries per
  folder, which ext4/xfs directory indexes handle without noticing.

Durability: temp file -> fsync -> rename -> fsync folder -> LMDB commit. The commit is the
point of truth; a crash anywhere before it leaves a temp file (swept at start-up) or an
unknown chunk file (re-adopted if its header and hash verify, else deleted).

Modes: ``normal``; ``degraded`` when a chunk could not be stored for lack of space even
after eviction (data is served uncached, the next successful store clears it);
``passthrough`` when the cache directory is unusable (not a directory, read-only, EIO,
permission denied, in use by another process): reads go straight to the origins and
``probe()`` retries the cache periodically. No mode ever fails a read by itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import lmdb

from musicfs.cache.index import (
    HASH_LEN,
    VERSION_LEN,
    ChunkIndex,
    IndexUnusable,
    check_structure,
    move_aside,
)
from musicfs.config import CacheSettings
from musicfs.failpoints import fail_point

log = logging.getLogger(__name__)

NORMAL = "normal"
DEGRADED = "degraded"
PASSTHROUGH = "passthrough"

MAGIC = b"MFSC"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">4sB3x16sQQ")  # magic, format, file version, offset, length
_HEADER_CHECK_LEN = 16
HEADER_SIZE = _HEADER.size + _HEADER_CHECK_LEN

# Background eviction starts above HIGH and stops at LOW (fractions of the budget).
HIGH_WATERMARK = 0.95
LOW_WATERMARK = 0.85
# Errors that mean "this cache directory cannot be used right now".
_UNUSABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOTDIR, errno.EBUSY}
_FULL = {errno.ENOSPC, errno.EDQUOT}
_NOT_OPENED = "not opened yet"
_CLOSED = "closed"


def chunk_hash(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_LEN).digest()


def _header_check(head: bytes) -> bytes:
    return hashlib.blake2b(head, digest_size=_HEADER_CHECK_LEN, person=b"musicfs-chunk").digest()


def encode_header(version: bytes, offset: int, length: int) -> bytes:
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, version, offset, length)
    return head + _header_check(head)


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    version: bytes
    offset: int
    length: int


def decode_header(raw: bytes) -> ChunkHeader | None:
    """The header, or ``None`` if it is not a valid chunk header."""
    if len(raw) < HEADER_SIZE:
        return None
    head = raw[: _HEADER.size]
    if raw[_HEADER.size : HEADER_SIZE] != _header_check(head):
        return None
    magic, fmt, version, offset, length = _HEADER.unpack(head)
    if magic != MAGIC or fmt != FORMAT_VERSION:
        return None
    return ChunkHeader(version, offset, length)


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.strerror or exc} (errno={errno.errorcode.get(exc.errno, exc.errno)})"
    return str(exc)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A stored chunk failed verification and was quarantined: fetch it again."""

    problem: str


class PutResult(Enum):
    STORED = "stored"
    EXISTS = "exists"  # same bytes already stored (dedup): only the mapping was added
    FULL = "full"  # no room even after eviction: served uncached, mode degraded
    SKIPPED = "skipped"  # passthrough: nothing written


@dataclass
class StoreCounters:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    missing_files: int = 0
    stored: int = 0
    stored_bytes: int = 0
    deduplicated: int = 0
    full: int = 0
    evicted: int = 0
    evicted_bytes: int = 0
    write_errors: int = 0
    read_errors: int = 0
    # Where a cache hit's time goes (the bench reports verification's share).
    read_seconds: float = 0.0
    verify_seconds: float = 0.0


@dataclass
class StartupReport:
    """What the start-up repair found and did."""

    index_rebuilt: bool = False
    index_problem: str | None = None
    temp_removed: int = 0
    missing_dropped: int = 0
    bad_records: int = 0
    adopted: int = 0
    deleted: int = 0
    quarantined: int = 0
    chunks: int = 0
    bytes: int = 0
    details: list[str] = field(default_factory=list)

    def repairs(self) -> int:
        return (
            self.temp_removed
            + self.missing_dropped
            + self.bad_records
            + self.adopted
            + self.deleted
            + self.quarantined
            + int(self.index_rebuilt)
        )

    def summary(self) -> str:
        parts = [f"{self.chunks} chunks, {self.bytes / 2**20:.1f} MiB"]
        if self.index_rebuilt:
            parts.append(f"index rebuilt ({self.index_problem})")
        for name in ("temp_removed", "missing_dropped", "bad_records", "adopted", "deleted"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name.replace('_', ' ')} {value}")
        if self.quarantined:
            parts.append(f"quarantined {self.quarantined}")
        return ", ".join(parts)


class ChunkStore:
    """All methods block (file I/O, LMDB, hashing): call them from worker threads.

    Thread-safe: one lock guards writes, eviction and the in-memory accounting; reads of
    chunk files and index lookups run without it.
    """

    def __init__(
        self,
        root: Path,
        *,
        chunk_size: int = 1024 * 1024,
        max_size: int = 10 * 1024**3,
        min_free: int = 1024**3,
        quarantine_keep: int = 2,
    ):
        self.root = Path(root)
        self.chunk_size = chunk_size
        self.max_size = max_size
        self.min_free = min_free
        self.quarantine_keep = quarantine_keep
        self.chunks_dir = self.root / "chunks"
        self.tmp_dir = self.root / "tmp"
        self.quarantine_dir = self.root / "quarantine"
        self.index_path = self.root / "index"
        self.index: ChunkIndex | None = None
        self.mode = PASSTHROUGH
        self.reason: str | None = _NOT_OPENED
        self.counters = StoreCounters()
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        # LRU order (oldest first) of every stored chunk -> payload size.
        self._lru: OrderedDict[bytes, int] = OrderedDict()
        self._pins: dict[bytes, int] = {}
        self._touched: dict[bytes, int] = {}
        self._used = 0
        self._temp_seq = 0
        self._users = 0
        self._users_cond = threading.Condition()
        self._map_grow = 1

    @classmethod
    def from_settings(cls, cache_dir: Path, settings: CacheSettings) -> ChunkStore:
        return cls(
            cache_dir,
            chunk_size=settings.chunk_size,
            max_size=settings.max_size,
            min_free=settings.min_free,
        )

    # -- filesystem primitives (FaultyStore overrides these to inject faults) ---------

    def _open_temp(self) -> tuple[int, Path]:
        self._temp_seq += 1
        path = self.tmp_dir / f"{os.getpid()}.{threading.get_ident()}.{self._temp_seq}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return fd, path

    def _write_all(self, fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def _fsync(self, fd: int) -> None:
        os.fsync(fd)

    def _rename(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)

    def _fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _unlink(self, path: Path) -> None:
        os.unlink(path)

    def _read_file(self, path: Path, limit: int) -> bytes:
        """Up to ``limit`` bytes of a regular file; never follows a symlink."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EISDIR, "not a regular file")
            parts = []
            while limit > 0:
                part = os.read(fd, limit)
                if not part:
                    break
                parts.append(part)
                limit -= len(part)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            os.close(fd)

    def _free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    # -- paths -----------------------------------------------------------------------

    def chunk_path(self, digest: bytes) -> Path:
        name = digest.hex()
        return self.chunks_dir / name[:2] / name

    # -- modes -----------------------------------------------------------------------

    def _set_mode(self, mode: str, reason: str | None) -> None:
        if mode == self.mode and reason == self.reason:
            return
        old, old_reason = self.mode, self.reason
        self.mode, self.reason = mode, reason
        if mode == PASSTHROUGH:
            log.error(
                "cache: %s: passthrough mode, reads go to the origins uncached: %s",
                self.root,
                reason,
            )
        elif mode == DEGRADED:
            log.warning("cache: %s: degraded, serving uncached: %s", self.root, reason)
        elif old != NORMAL and old_reason not in (_NOT_OPENED, _CLOSED):
            log.info("cache: %s: back to normal (was %s)", self.root, old)

    def _unusable(self, what: str, exc: BaseException) -> None:
        self._set_mode(PASSTHROUGH, f"{what}: {describe(exc)}")

    # -- opening and start-up repair --------------------------------------------------

    def open(self) -> StartupReport | None:
        """Open (or re-open) the store and repair it. Never raises for a bad cache: on
        failure the store is in passthrough mode and ``None`` is returned."""
        with self._lock:
            self._close_locked(flush=False)
            try:
                report = self._open_locked()
            except (OSError, IndexUnusable, lmdb.Error) as exc:
                self._close_locked(flush=False)
                self._unusable(str(self.root), exc)
                return None
            log.info("cache: %s opened: %s", self.root, report.summary())
            self._set_mode(NORMAL, None)
            return report

    def _open_locked(self) -> StartupReport:
        report = StartupReport()
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "cache dir is not a directory")
        for d in (self.root, self.chunks_dir, self.tmp_dir, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self._open_index(report)
        self._sweep_temp(report)
        self._reconcile(report)
        self._probe_write()
        report.chunks = len(self._lru)
        report.bytes = self._used
        return report

    def _take_lock(self) -> None:
        path = self.root / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OSError(
                    errno.EBUSY, f"in use by another MusicFS process (pid {holder})"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _map_size(self) -> int:
        """The LMDB map: address space, not disk -- the file only grows as records are
        written. Three small records per chunk; 1 GiB holds millions of chunks."""
        return max(2**30, (self.max_size // self.chunk_size + 1) * 4096)

    def _index_map_size(self) -> int:
        return self._map_size() * self._map_grow

    def _open_index(self, report: StartupReport) -> None:
        problem = check_structure(self.index_path)
        if problem is None:
            try:
                self.index = ChunkIndex(self.index_path, map_size=self._index_map_size())
                self._check_meta(report)
                return
            except (IndexUnusable, lmdb.Error) as exc:
                if self.index is not None:
                    self.index.close()
                    self.index = None
                problem = str(exc)
        move_aside(self.index_path, problem)
        report.index_rebuilt = True
        report.index_problem = problem
        self.index = ChunkIndex(self.index_path, map_size=self._index_map_size())
        self._check_meta(report)

    def _check_meta(self, report: StartupReport) -> None:
        assert self.index is not None
        want = str(self.chunk_size).encode()
        have = self.index.get_meta(b"chunk_size")
        if have is not None and have != want:
            # Chunk numbers mean other byte ranges now: forget every mapping. Files whose
            # header still fits the new size are re-adopted by the reconcile pass.
            log.warning(
                "cache: chunk size changed from %s to %s; index cleared",
                have.decode(),
                want.decode(),
            )
            self.index.clear()
            report.index_rebuilt = True
            report.index_problem = "chunk size changed"
        if have != want:
            self.index.set_meta(b"chunk_size", want)

    def _sweep_temp(self, report: StartupReport) -> None:
        for entry in os.scandir(self.tmp_dir):
            _remove_any(Path(entry.path))
            report.temp_removed += 1
        if report.temp_removed:
            log.info("cache: removed %d temp files left by a crash", report.temp_removed)

    def _note(self, report: StartupReport, message: str) -> None:
        # One line per problem, but a disaster does not get to flood the log.
        if len(report.details) < 20:
            log.warning("cache: %s", message)
        report.details.append(message)

    def _reconcile(self, report: StartupReport) -> None:
        """Make the index and the chunk files agree (cheap: stats, no hashing, except for
        files the index does not know)."""
        assert self.index is not None
        blobs, bad = self.index.all_blobs()
        if bad:
            report.bad_records += len(bad)
            self._note(report, f"{len(bad)} index records failed their checksum; dropped")
            self.index.drop_blobs(bad)
        gone: list[bytes] = []
        known: dict[bytes, int] = {}
        for digest, info in blobs.items():
            path = self.chunk_path(digest)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                report.missing_dropped += 1
                self._note(
                    report,
                    f"chunk {digest.hex()[:16]} is in the index but its file is missing; dropped",
                )
                gone.append(digest)
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size != HEADER_SIZE + info.size:
                what = "not a regular file" if not stat.S_ISREG(st.st_mode) else "wrong size"
                self._quarantine_file(path, what)
                report.quarantined += 1
                self._note(report, f"chunk {digest.hex()[:16]} {path}: {what}; quarantined")
                gone.append(digest)
                continue
            known[digest] = info.size
        if gone:
            self.index.drop_blobs(gone)
        adopt = self._scan_files(report, known)
        if adopt:
            self.index.add_many(adopt, int(time.time()))
            for _, _, digest, size in adopt:
                known[digest] = size
        # Mappings that point at nothing (or fail their checksum) are dropped.
        dangling = [key for key, digest in self.index.all_maps() if digest not in known]
        if dangling:
            report.bad_records += len(dangling)
            self.index.drop_maps(dangling)
        blobs, _ = self.index.all_blobs()
        self._lru.clear()
        self._pins.clear()
        self._touched.clear()
        self._used = 0
        for digest, info in sorted(blobs.items(), key=lambda kv: kv[1].last_access):
            if digest in known:
                self._lru[digest] = info.size
                self._used += info.size
                if info.pins:
                    self._pins[digest] = info.pins

    def _scan_files(
        self, report: StartupReport, known: dict[bytes, int]
    ) -> list[tuple[bytes, int, bytes, int]]:
        """Walk the chunk folders; re-adopt verified files the index does not know."""
        adopt: list[tuple[bytes, int, bytes, int]] = []
        for fan in os.scandir(self.chunks_dir):
            fan_path = Path(fan.path)
            if not (fan.is_dir(follow_symlinks=False) and _is_hex(fan.name, 2)):
                _remove_any(fan_path)
                report.deleted += 1
                self._note(report, f"{fan_path}: unexpected entry in the chunk folder; deleted")
                continue
            for entry in os.scandir(fan_path):
                path = Path(entry.path)
                name = entry.name
                if not (_is_hex(name, HASH_LEN * 2) and name.startswith(fan.name)):
                    _remove_any(path)
                    report.deleted += 1
                    self._note(report, f"{path}: not a chunk file name; deleted")
                    continue
                digest = bytes.fromhex(name)
                if digest in known:
                    continue
                why = self._adoptable(path, digest)
                if isinstance(why, str):
                    _remove_any(path)
                    report.deleted += 1
                    self._note(report, f"{path}: unknown to the index and {why}; deleted")
                    continue
                adopt.append((why.version, why.offset // self.chunk_size, digest, why.length))
                known[digest] = why.length
                report.adopted += 1
        if report.adopted:
            log.info("cache: re-adopted %d verified chunk files", report.adopted)
        return adopt

    def _adoptable(self, path: Path, digest: bytes) -> ChunkHeader | str:
        """The header of a chunk file that verifies, or why it does not."""
        try:
            raw = self._read_file(path, HEADER_SIZE + self.chunk_size + 1)
        except OSError as exc:
            return f"unreadable ({describe(exc)})"
        header = decode_header(raw)
        if header is None:
            return "its header is invalid"
        if len(raw) != HEADER_SIZE + header.length or header.length > self.chunk_size:
            return "its length is wrong"
        if header.offset % self.chunk_size:
            return "it belongs to another chunk size"
        if chunk_hash(memoryview(raw)[HEADER_SIZE:]) != digest:
            return "its hash does not match"
        return header

    def _probe_write(self) -> None:
        """Prove the directory and the index take writes before declaring the store usable."""
        assert self.index is not None
        fd, path = self._open_temp()
        try:
            self._write_all(fd, b"probe")
            self._fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                self._unlink(path)
        self.index.set_meta(b"probed", str(int(time.time())).encode())

    def probe(self) -> bool:
        """Retry an unusable cache (passthrough): re-open and repair it. True if usable."""
        if self.mode != PASSTHROUGH:
            return True
        return self.open() is not None

    # -- closing ----------------------------------------------------------------------

    def close(self, *, flush: bool = True) -> None:
        """``flush=False`` closes like a crash would (tests simulate process death)."""
        with self._lock:
            self._close_locked(flush=flush)
            self.mode, self.reason = PASSTHROUGH, _CLOSED

    @contextlib.contextmanager
    def _index_use(self) -> Iterator[None]:
        """Lock-free index readers register so that closing waits for them: closing an
        LMDB environment under a running lookup is undefined behaviour."""
        with self._users_cond:
            self._users += 1
        try:
            yield
        finally:
            with self._users_cond:
                self._users -= 1
                self._users_cond.notify_all()

    def _close_locked(self, *, flush: bool) -> None:
        with self._users_cond:
            self._users_cond.wait_for(lambda: self._users == 0, timeout=5.0)
        if self.index is not None:
            if flush:
                self._flush_access_locked()
            self.index.close()
            self.index = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- reads -----------------------------------------------------------------------

    def has(self, version: bytes, chunk_no: int) -> bool:
        index = self.index
        if index is None or self.mode == PASSTHROUGH:
            return False
        try:
            with self._index_use():
                digest = index.lookup(version, chunk_no)
        except lmdb.Error:
            return False
        return digest is not None and digest in self._lru

    def get(
        self, version: bytes, chunk_no: int, expected: int, *, label: str = ""
    ) -> bytes | Rejected | None:
        """The verified payload of chunk ``chunk_no`` of ``version``; ``None`` on a miss;
        ``Rejected`` if the stored chunk failed verification (it is quarantined)."""
        index = self.index
        if index is None or self.mode == PASSTHROUGH:
            return None
        try:
            with self._index_use():
                digest = index.lookup(version, chunk_no)
        except lmdb.Error as exc:
            with self._lock:
                self._unusable("index lookup", exc)
            return None
        if digest is None:
            self.counters.misses += 1
            return None
        path = self.chunk_path(digest)
        where = f"{label!r} chunk {chunk_no}" if label else f"chunk {chunk_no}"
        started = time.perf_counter()
        try:
            fail_point("cas.get.before_read")
            raw = self._read_file(path, HEADER_SIZE + expected + 1)
        except FileNotFoundError:
            self.counters.missing_files += 1
            self.counters.misses += 1
            log.warning("cache: %s: chunk file %s is missing; index entry dropped", where, path)
            with self._lock:
                self._forget_locked([digest])
            return None
        except OSError as exc:
            self.counters.read_errors += 1
            why = (
                "not a regular file"
                if exc.errno in (errno.ELOOP, errno.EISDIR)
                else f"unreadable: {describe(exc)}"
            )
            self._reject(digest, why, where)
            return Rejected(why)
        read_done = time.perf_counter()
        problem = self._verify(raw, digest, expected)
        self.counters.read_seconds += read_done - started
        self.counters.verify_seconds += time.perf_counter() - read_done
        if problem is not None:
            self._reject(digest, problem, where)
            return Rejected(problem)
        with self._lock:
            if digest in self._lru:
                self._lru.move_to_end(digest)
                self._touched[digest] = int(time.time())
        self.counters.hits += 1
        return raw[HEADER_SIZE:]

    def _verify(self, raw: bytes, digest: bytes, expected: int) -> str | None:
        if len(raw) < HEADER_SIZE:
            return f"truncated ({len(raw)} bytes)"
        header = decode_header(raw)
        if header is None:
            return "header is damaged"
        if header.length != expected:
            return f"holds {header.length} bytes, expected {expected}"
        if len(raw) != HEADER_SIZE + expected:
            return f"file is {len(raw)} bytes, expected {HEADER_SIZE + expected}"
        if chunk_hash(memoryview(raw)[HEADER_SIZE:]) != digest:
            return "hash mismatch"
        return None

    def check_chunk(self, digest: bytes, size: int) -> str | None:
        """Why the stored chunk ``digest`` of ``size`` bytes is bad, or ``None`` (fsck)."""
        try:
            raw = self._read_file(self.chunk_path(digest), HEADER_SIZE + size + 1)
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR):
                return "not a regular file"
            return f"unreadable: {describe(exc)}"
        return self._verify(raw, digest, size)

    def stored_chunks(self) -> list[tuple[bytes, int]]:
        with self._lock:
            return list(self._lru.items())

    def reject(self, digest: bytes, problem: str, where: str, then: str = "refetching") -> None:
        """Quarantine a chunk that failed verification and forget it."""
        self._reject(digest, problem, where, then)

    def _reject(self, digest: bytes, problem: str, where: str, then: str = "refetching") -> None:
        self.counters.corrupt += 1
        log.warning(
            "cache: %s: chunk %s is corrupt (%s); quarantined, %s",
            where,
            digest.hex()[:16],
            problem,
            then,
        )
        with self._lock:
            try:
                self._quarantine_file(self.chunk_path(digest), problem)
            except OSError as exc:
                self._unusable("quarantining a corrupt chunk", exc)
            self._forget_locked([digest])

    def _quarantine_file(self, path: Path, why: str) -> None:
        """Move a bad chunk file out of the way, keeping only the newest few."""
        target = self.quarantine_dir / f"{path.name}.{time.time_ns()}"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno in _UNUSABLE:
                raise
            _remove_any(path)
        kept = sorted(self.quarantine_dir.iterdir(), key=lambda p: p.name.rsplit(".", 1)[-1])
        for old in kept[: max(0, len(kept) - self.quarantine_keep)]:
            _remove_any(old)

    def _forget_locked(self, digests: list[bytes]) -> None:
        for digest in digests:
            size = self._lru.pop(digest, None)
            if size is not None:
                self._used -= size
            self._pins.pop(digest, None)
            self._touched.pop(digest, None)
        if self.index is None:
            return
        try:
            self.index.drop_blobs(digests)
        except (lmdb.Error, OSError) as exc:
            # The stale records are dropped on the next read or at the next start-up.
            log.warning("cache: cannot drop index records: %s", describe(exc))

    # -- writes ----------------------------------------------------------------------

    def put(self, version: bytes, chunk_no: int, data: bytes) -> PutResult:
        """Store ``data`` as chunk ``chunk_no`` of ``version``. Never raises for a disk
        problem: the result and ``mode`` say what happened."""
        if self.index is None or self.mode == PASSTHROUGH:
            return PutResult.SKIPPED
        assert len(version) == VERSION_LEN
        digest = chunk_hash(data)
        with self._lock:
            if self.index is None or self.mode == PASSTHROUGH:
                return PutResult.SKIPPED
            if digest in self._lru:
                try:
                    self.index.add(version, chunk_no, digest, len(data), int(time.time()))
                except (lmdb.Error, OSError) as exc:
                    log.warning("cache: cannot record a deduplicated chunk: %s", describe(exc))
                    return PutResult.FULL
                self.counters.deduplicated += 1
                return PutResult.EXISTS
            return self._put_locked(version, chunk_no, digest, data)

    def _put_locked(self, version: bytes, chunk_no: int, digest: bytes, data: bytes) -> PutResult:
        assert self.index is not None
        need = HEADER_SIZE + len(data)
        for attempt in range(2):
            try:
                self._make_room(need, hard=attempt > 0)
                self._write_chunk(
                    digest, encode_header(version, chunk_no * self.chunk_size, len(data)), data
                )
            except OSError as exc:
                self.counters.write_errors += 1
                if exc.errno in _FULL:
                    continue  # evict harder and retry once
                if exc.errno in _UNUSABLE:
                    self._unusable("writing a chunk", exc)
                    return PutResult.SKIPPED
                self._set_mode(DEGRADED, f"writing a chunk: {describe(exc)}")
                return PutResult.FULL
            try:
                fail_point("cas.put.before_commit")
                self.index.add(version, chunk_no, digest, len(data), int(time.time()))
            except (lmdb.Error, OSError) as exc:
                self.counters.write_errors += 1
                self._discard(digest)
                if isinstance(exc, lmdb.MapFullError):
                    self._map_full(exc)
                    return PutResult.SKIPPED
                # LMDB reports a full disk as EIO: ask the filesystem which it was.
                if self._free_bytes() < 2 * need + self.min_free:
                    continue
                self._unusable("committing the index", exc)
                return PutResult.SKIPPED
            fail_point("cas.put.after_commit")
            self._lru[digest] = len(data)
            self._used += len(data)
            self.counters.stored += 1
            self.counters.stored_bytes += len(data)
            if self.mode == DEGRADED:
                self._set_mode(NORMAL, None)
            return PutResult.STORED
        self.counters.full += 1
        self._set_mode(
            DEGRADED,
            f"no room for a {need}-byte chunk (used {self._used}, max_size {self.max_size}, "
            f"min_free {self.min_free})",
        )
        return PutResult.FULL

    def _map_full(self, exc: BaseException) -> None:
        """More index records than the map was sized for. Not even deletes fit in a full
        map, so eviction cannot help, and growing it needs every reader out of the
        environment: go passthrough; the periodic re-open uses a map twice the size."""
        self._map_grow *= 2
        self._unusable("index map full, re-opening with a larger map", exc)

    def _write_chunk(self, digest: bytes, header: bytes, data: bytes) -> None:
        """temp -> fsync -> rename -> fsync dir. A failure leaves no temp file behind."""
        fail_point("cas.put.before_write")
        fd, tmp = self._open_temp()
        try:
            try:
                self._write_all(fd, header)
                self._write_all(fd, data)
                fail_point("cas.put.after_write")
                self._fsync(fd)
                fail_point("cas.put.after_fsync")
            finally:
                os.close(fd)
            target = self.chunk_path(digest)
            target.parent.mkdir(exist_ok=True)
            self._rename(tmp, target)
        except OSError:
            # Only for I/O errors: anything else stands for a crash, whose leftovers the
            # start-up sweep removes (and the crash tests want to see exactly that).
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fail_point("cas.put.after_rename")
        self._fsync_dir(target.parent)
        fail_point("cas.put.after_dir_fsync")

    def _discard(self, digest: bytes) -> None:
        # On failure an orphan stays: re-adopted or deleted at the next start-up.
        with contextlib.suppress(OSError):
            self._unlink(self.chunk_path(digest))

    # -- space -----------------------------------------------------------------------

    def budget(self) -> int:
        """Bytes the chunks may use now: ``max_size``, less whatever ``min_free`` needs."""
        try:
            free = self._free_bytes()
        except OSError:
            return self.max_size
        return max(0, min(self.max_size, self._used + free - self.min_free))

    def _make_room(self, need: int, *, hard: bool) -> None:
        budget = self.budget()
        if hard:
            # The filesystem said ENOSPC although statvfs promised room: free real space.
            self._clear_quarantine()
            self._evict_locked(min(int(budget * LOW_WATERMARK), self._used - 2 * need) - need)
        elif self._used + need > budget:
            self._clear_quarantine()
            self._evict_locked(int(budget * LOW_WATERMARK) - need)
        if self._used + need > self.budget():
            raise OSError(errno.ENOSPC, "cache budget exhausted")

    def _clear_quarantine(self) -> None:
        for path in self.quarantine_dir.iterdir():
            _remove_any(path)

    def maintain(self) -> int:
        """Background housekeeping: evict between the watermarks, flush access times.
        Returns the number of chunks evicted."""
        with self._lock:
            if self.index is None or self.mode == PASSTHROUGH:
                return 0
            evicted = 0
            budget = self.budget()
            if self._used > budget * HIGH_WATERMARK:
                evicted = self._evict_locked(int(budget * LOW_WATERMARK))
            self._flush_access_locked()
            return evicted

    def evict(self, target: int) -> int:
        """Evict least-recently-used unpinned chunks until at most ``target`` bytes remain."""
        with self._lock:
            if self.index is None:
                return 0
            return self._evict_locked(target)

    def _evict_locked(self, target: int) -> int:
        victims: list[bytes] = []
        freed = 0
        for digest, size in self._lru.items():
            if self._used - freed <= target:
                break
            if self._pins.get(digest):
                continue
            victims.append(digest)
            freed += size
        done: list[bytes] = []
        try:
            for digest in victims:
                fail_point("cas.evict.before_unlink")
                try:
                    self._unlink(self.chunk_path(digest))
                except FileNotFoundError:
                    pass
                except IsADirectoryError:
                    _remove_any(self.chunk_path(digest))
                fail_point("cas.evict.after_unlink")
                done.append(digest)
                size = self._lru.pop(digest)
                self._used -= size
                self.counters.evicted += 1
                self.counters.evicted_bytes += size
        except OSError as exc:
            if exc.errno in _UNUSABLE:
                self._unusable("evicting", exc)
            else:
                log.warning("cache: eviction stopped: %s", describe(exc))
        finally:
            if done and self.index is not None:
                try:
                    # Unlink first, commit after: on a full disk the commit needs the space
                    # the unlinks freed; a crash in between leaves records of missing
                    # files, which reads and start-up drop.
                    self.index.drop_blobs(done)
                except (lmdb.Error, OSError) as exc:
                    log.warning("cache: eviction index commit failed: %s", describe(exc))
                for digest in done:
                    self._touched.pop(digest, None)
        if done:
            log.debug("cache: evicted %d chunks (%d bytes)", len(done), freed)
        return len(done)

    def _flush_access_locked(self) -> None:
        if not self._touched or self.index is None:
            return
        touched, self._touched = self._touched, {}
        try:
            self.index.touch(touched)
        except (lmdb.Error, OSError) as exc:
            log.warning("cache: cannot save access times: %s", describe(exc))

    # -- pins ------------------------------------------------------------------------

    def pin(self, version: bytes, chunk_no: int, delta: int = 1) -> bool:
        """Keep a chunk from eviction (``delta=-1`` releases). False if it is not stored."""
        with self._lock:
            if self.index is None:
                return False
            digest = self.index.lookup(version, chunk_no)
            if digest is None or digest not in self._lru:
                return False
            pins = self.index.set_pins(digest, delta)
            if pins:
                self._pins[digest] = pins
            else:
                self._pins.pop(digest, None)
            return True

    # -- status ----------------------------------------------------------------------

    @property
    def used(self) -> int:
        return self._used

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "dir": str(self.root),
            "chunks": len(self._lru),
            "size": self._used,
            "used_bytes": self._used,  # the daemon's status line reads this name
            "max_size": self.max_size,
            "min_free": self.min_free,
            "chunk_size": self.chunk_size,
            "pinned": len(self._pins),
            "counters": asdict(self.counters),
        }


def _is_hex(name: str, length: int) -> bool:
    return len(name) == length and all(c in "0123456789abcdef" for c in name)


def _remove_any(path: Path) -> None:
    """Remove a file, symlink or folder at ``path`` without following links."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
