"""The cache directory on disk: its layout, the atomic chunk write, quarantine and the
one-process lock. Every filesystem call the store makes goes through ``CacheDisk``, so a
test (``tests/support/faulty_store.py``) can make each one fail.

Layout under the cache directory::

    chunks/ab/ab12...ef   one file per chunk, named by the BLAKE2b-256 of its payload
    tmp/                  chunks being written; anything here at start-up is a crash leftover
    quarantine/           the newest few chunk files that failed verification, for forensics
    index/                the LMDB environment (see ``index.py``)
    lock                  one process per cache directory

One fan-out level of 256 folders: a million chunks (1 TB) is ~4k entries per folder,
which ext4/xfs directory indexes handle without noticing.

Durability: temp file -> fsync -> rename -> fsync folder, then the store commits the index
(for a batch of chunks: every step for all of them, then one commit).
That commit is the point of truth; a crash anywhere before it leaves a temp file (swept at
start-up) or an unknown chunk file (re-adopted if its header and hash verify, else deleted).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import trio

from musicfs.cache.chunkfile import HEADER_SIZE, verify
from musicfs.cache.modes import UNUSABLE
from musicfs.failpoints import fail_point
from musicfs.locks import FileLock, LockHeld
from musicfs.resources import describe

T = TypeVar("T")
# How many fsyncs of a batch of chunk writes are in flight at once (see ``write_chunks``).
SYNC_THREADS = 8


class CacheDisk:
    """Blocking file I/O: call from worker threads."""

    def __init__(self, root: Path, *, quarantine_keep: int = 2):
        self.root = Path(root)
        self.quarantine_keep = quarantine_keep
        self.chunks_dir = self.root / "chunks"
        self.tmp_dir = self.root / "tmp"
        self.quarantine_dir = self.root / "quarantine"
        self.index_path = self.root / "index"
        self._dir_lock: FileLock | None = None
        self._temp_seq = 0

    def chunk_path(self, digest: bytes) -> Path:
        name = digest.hex()
        return self.chunks_dir / name[:2] / name

    # -- primitives (FaultyDisk overrides these to inject faults) ----------------------

    def open_temp(self) -> tuple[int, Path]:
        self._temp_seq += 1
        path = self.tmp_dir / f"{os.getpid()}.{threading.get_ident()}.{self._temp_seq}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return fd, path

    def write_all(self, fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def rename(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def read_file(self, path: Path, limit: int) -> bytes:
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

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    # -- the directory -----------------------------------------------------------------

    def prepare(self) -> None:
        """Create the layout; a cache dir that is not a directory is ENOTDIR."""
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "cache dir is not a directory")
        for d in (self.root, self.chunks_dir, self.tmp_dir, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)

    def take_lock(self, *, writable: bool = True) -> None:
        """One process per cache directory; EBUSY names the holder's pid.

        ``writable=False`` locks an existing lock file without writing to it (a read-only
        cache)."""
        lock = FileLock(self.root / "lock", writable=writable)
        try:
            lock.acquire()
        except LockHeld as held:
            raise OSError(
                errno.EBUSY, f"in use by another MusicFS process (pid {held.holder or '?'})"
            ) from None
        self._dir_lock = lock

    @property
    def locked(self) -> bool:
        return self._dir_lock is not None

    def release_lock(self) -> None:
        if self._dir_lock is not None:
            self._dir_lock.release()
            self._dir_lock = None

    def probe_write(self) -> None:
        """Prove the directory takes writes (the store then proves the index does)."""
        fd, path = self.open_temp()
        try:
            self.write_all(fd, b"probe")
            self.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                self.unlink(path)

    # -- chunk files -------------------------------------------------------------------

    def write_chunk(self, digest: bytes, header: bytes, data: bytes) -> None:
        """temp -> fsync -> rename -> fsync dir. A failure leaves no file behind."""
        self.write_chunks([(digest, header, data)])

    def write_chunks(self, chunks: Sequence[tuple[bytes, bytes, bytes]]) -> None:
        """``write_chunk`` for several ``(digest, header, payload)`` at once: each step for
        every file before the next step, with the fsyncs of a step in flight together, so
        the file system journals the batch in one commit rather than one per file (a
        synchronous commit per chunk was what bounded caching a folder of small tracks).
        A failure leaves none of the files behind; the failpoints fire once per batch."""
        fail_point("cas.put.before_write")
        temps: list[tuple[int, Path, Path]] = []
        renamed = 0
        try:
            try:
                for digest, header, data in chunks:
                    fd, tmp = self.open_temp()
                    temps.append((fd, tmp, self.chunk_path(digest)))
                    self.write_all(fd, header)
                    self.write_all(fd, data)
                fail_point("cas.put.after_write")
                in_parallel(self.fsync, [fd for fd, _, _ in temps])
                fail_point("cas.put.after_fsync")
            finally:
                for fd, _, _ in temps:
                    os.close(fd)
            for _, tmp, target in temps:
                target.parent.mkdir(exist_ok=True)
                self.rename(tmp, target)
                renamed += 1
        except OSError:
            # Only for I/O errors: anything else stands for a crash, whose leftovers the
            # start-up sweep removes (and the crash tests want to see exactly that). No
            # index record names these files yet, so removing them loses nothing.
            for k, (_, tmp, target) in enumerate(temps):
                with contextlib.suppress(OSError):
                    os.unlink(target if k < renamed else tmp)
            raise
        fail_point("cas.put.after_rename")
        in_parallel(self.fsync_dir, sorted({target.parent for _, _, target in temps}))
        fail_point("cas.put.after_dir_fsync")

    def discard(self, digest: bytes) -> None:
        """Remove a chunk file the index never got to know about."""
        # On failure an orphan stays: re-adopted or deleted at the next start-up.
        with contextlib.suppress(OSError):
            self.unlink(self.chunk_path(digest))

    def check_chunk(self, digest: bytes, size: int) -> str | None:
        """Why the stored chunk ``digest`` of ``size`` bytes is bad, or ``None`` (fsck)."""
        try:
            raw = self.read_file(self.chunk_path(digest), HEADER_SIZE + size + 1)
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR):
                return "not a regular file"
            return f"unreadable: {describe(exc)}"
        return verify(raw, digest, size)

    # -- quarantine --------------------------------------------------------------------

    def quarantine(self, path: Path) -> None:
        """Move a bad chunk file out of the way, keeping only the newest few. Raises only
        for errors that make the whole directory unusable."""
        target = self.quarantine_dir / f"{path.name}.{time.time_ns()}"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno in UNUSABLE:
                raise
            remove_any(path)
        kept = sorted(self.quarantine_dir.iterdir(), key=lambda p: p.name.rsplit(".", 1)[-1])
        for old in kept[: max(0, len(kept) - self.quarantine_keep)]:
            remove_any(old)

    def clear_quarantine(self) -> None:
        """Free the space the forensic copies take (the cache is out of room)."""
        for path in self.quarantine_dir.iterdir():
            remove_any(path)


def in_parallel(fn: Callable[[T], object], args: Sequence[T]) -> None:
    """``fn(arg)`` for every arg, up to ``SYNC_THREADS`` at a time; raises the first error
    once all have finished. The helpers come from trio's cache of daemon threads (safe
    from any thread; starting a fresh thread per batch cost more GIL time than the
    overlapped fsyncs saved), never waited for at exit: an fsync stuck on a dead disk
    must not keep the process from ending."""
    if len(args) <= 1:
        for arg in args:
            fn(arg)
        return
    errors: list[BaseException] = []
    finished = threading.Semaphore(0)

    def run(share: Sequence[T]) -> None:
        for arg in share:
            try:
                fn(arg)
            except BaseException as exc:
                errors.append(exc)

    shares = [args[k::SYNC_THREADS] for k in range(min(SYNC_THREADS, len(args)))]
    for share in shares[1:]:
        trio.lowlevel.start_thread_soon(functools.partial(run, share), lambda _: finished.release())
    run(shares[0])
    for _ in shares[1:]:
        finished.acquire()
    if errors:
        raise errors[0]


def is_hex(name: str, length: int) -> bool:
    return len(name) == length and all(c in "0123456789abcdef" for c in name)


def remove_any(path: Path) -> None:
    """Remove a file, symlink or folder at ``path`` without following links."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
