"""A folder on this machine (or on a mount such as NFS) as an origin."""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_mod
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import trio

from musicfs.failpoints import fail_point
from musicfs.origins.base import Listing, OriginEntry, OriginError

log = logging.getLogger(__name__)
T = TypeVar("T")


class LocalOrigin:
    """Serves files under ``root``; never anything outside it, whatever symlinks say."""

    def __init__(self, name: str, root: Path, *, max_threads: int = 8):
        self._name = name
        self.root = Path(os.path.abspath(root))
        # Threads may be abandoned when a request's deadline passes (a hung NFS mount);
        # the limiter keeps such a hang from eating every worker thread.
        self._limiter = trio.CapacityLimiter(max_threads)
        self._root_real: str | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def display_url(self) -> str:
        return f"file://{self.root}"

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(
            fn, *args, limiter=self._limiter, abandon_on_cancel=True
        )

    def _error(self, exc: OSError, path: str | None) -> OriginError:
        err = exc.errno or errno.EIO
        return OriginError(err, exc.strerror or str(exc), origin=self._name, path=path)

    def _real_root(self, *, refresh: bool = False) -> str:
        """The root with its symlinks resolved: re-resolved by every listing and health
        check, remembered in between (resolving it for every read cost a stat per
        component of its path)."""
        if refresh or self._root_real is None:
            self._root_real = os.path.realpath(self.root)
        return self._root_real

    def _inside(self, real_root: str, real: str) -> bool:
        return real == real_root or real.startswith(real_root.rstrip("/") + "/")

    def _resolve(self, path: str) -> str:
        """The real file for ``path``; refuses anything that resolves outside the root."""
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise OriginError(errno.EINVAL, "invalid path", origin=self._name, path=path)
        real_root = self._real_root()
        real = _walk_beneath(real_root, parts)
        if not self._inside(real_root, real):
            raise OriginError(
                errno.EACCES, "path escapes the origin root", origin=self._name, path=path
            )
        return real

    # -- listing ---------------------------------------------------------------------

    def _list_sync(self) -> Listing:
        real_root = self._real_root(refresh=True)
        problem = self.root_problem()
        if problem is not None:
            raise problem
        entries: list[OriginEntry] = []
        gaps: list[str] = []
        seen_dirs: set[tuple[int, int]] = set()
        stack: list[tuple[str, str]] = [(real_root, "")]
        while stack:
            real_dir, rel_dir = stack.pop()
            try:
                st = os.stat(real_dir)
                key = (st.st_dev, st.st_ino)
                if key in seen_dirs:
                    log.warning("origin=%s path=%r: directory loop skipped", self._name, rel_dir)
                    continue
                seen_dirs.add(key)
                with os.scandir(real_dir) as it:
                    children = list(it)
            except OSError as exc:
                if rel_dir == "":
                    raise self._error(exc, "") from exc
                # One unreadable folder must not hide the rest of the library, and must
                # not make the tracks under it look deleted: report it as a gap.
                log.warning(
                    "origin=%s path=%r: cannot read folder, its tracks are kept as they were "
                    "(errno=%s)",
                    self._name,
                    rel_dir,
                    errno.errorcode.get(exc.errno or 0, exc.errno),
                )
                gaps.append(rel_dir)
                continue
            for child in children:
                rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
                try:
                    if child.is_symlink():
                        real = os.path.realpath(child.path)
                        if not self._inside(real_root, real):
                            log.warning(
                                "origin=%s path=%r: symlink escapes the origin root, skipped",
                                self._name,
                                rel,
                            )
                            continue
                        st = os.stat(real)
                    else:
                        real = child.path
                        st = child.stat(follow_symlinks=False)
                except OSError as exc:
                    log.warning(
                        "origin=%s path=%r: cannot stat, skipped (errno=%s)",
                        self._name,
                        rel,
                        errno.errorcode.get(exc.errno or 0, exc.errno),
                    )
                    continue
                if stat_mod.S_ISDIR(st.st_mode):
                    stack.append((real, rel))
                elif stat_mod.S_ISREG(st.st_mode):
                    entries.append(OriginEntry(rel, st.st_size, st.st_mtime_ns))
        return Listing(entries, tuple(gaps))

    async def list(self) -> Listing:
        try:
            result: Listing = await self._run(self._list_sync)
        except OriginError:
            raise
        except OSError as exc:
            raise self._error(exc, "") from exc
        return result

    # -- single files ----------------------------------------------------------------

    def _stat_sync(self, path: str) -> OriginEntry:
        real = self._resolve(path)
        try:
            st = os.stat(real)
        except OSError as exc:
            raise self._error(exc, path) from exc
        if not stat_mod.S_ISREG(st.st_mode):
            raise OriginError(errno.EISDIR, "not a regular file", origin=self._name, path=path)
        return OriginEntry(path, st.st_size, st.st_mtime_ns)

    async def stat(self, path: str) -> OriginEntry:
        result: OriginEntry = await self._run(self._stat_sync, path)
        return result

    def resolve_sync(self, path: str) -> str:
        """The real file behind ``path`` (from a worker thread), checked like a read: for
        a tag-parsing process that opens it itself."""
        fail_point("origin.local.read")
        return self._resolve(path)

    def open_sync(self, path: str) -> BinaryIO:
        """A plain file object for ``path`` (from a worker thread): lets tag reading skip the
        per-read hop through the event loop that remote origins need."""
        fail_point("origin.local.read")
        real = self._resolve(path)
        try:
            return open(real, "rb")
        except OSError as exc:
            raise self._error(exc, path) from exc

    def _read_sync(self, path: str, offset: int, length: int) -> bytes:
        fail_point("origin.local.read")
        real = self._resolve(path)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._error(exc, path) from exc
        try:
            chunks = []
            while length > 0:
                data = os.pread(fd, length, offset)
                if not data:
                    break
                chunks.append(data)
                offset += len(data)
                length -= len(data)
            return b"".join(chunks)
        except OSError as exc:
            raise self._error(exc, path) from exc
        finally:
            os.close(fd)

    async def read(self, path: str, offset: int, length: int) -> bytes:
        result: bytes = await self._run(self._read_sync, path, offset, length)
        return result

    def _check_sync(self) -> None:
        fail_point("origin.local.check")
        self._real_root(refresh=True)
        problem = self.root_problem()
        if problem is not None:
            raise problem
        try:
            os.listdir(self.root)
        except OSError as exc:
            raise self._error(exc, "") from exc

    async def check(self) -> None:
        await self._run(self._check_sync)

    def root_problem(self) -> OriginError | None:
        """Why the root cannot be listed at all (missing, or not a folder), or None."""
        try:
            st = os.stat(self.root)
        except OSError as exc:
            return self._error(exc, "")
        if not stat_mod.S_ISDIR(st.st_mode):
            return OriginError(
                errno.ENOTDIR, "origin root is not a directory", origin=self._name, path=""
            )
        return None

    async def aclose(self) -> None:
        return None


def _walk_beneath(real_root: str, parts: list[str]) -> str:
    """``realpath(real_root/parts...)`` for a ``real_root`` that has no symlinks: one
    ``lstat`` per component of ``parts`` instead of per component of the whole path. Any
    symlink (or anything unusual) on the way falls back to ``os.path.realpath``."""
    current = real_root
    try:
        for part in parts:
            candidate = f"{current}/{part}" if current != "/" else f"/{part}"
            if stat_mod.S_ISLNK(os.lstat(candidate).st_mode):
                break
            current = candidate
        else:
            return current
    except OSError:
        pass  # missing or unreadable: realpath says what it can, open() says the rest
    return os.path.realpath(os.path.join(real_root, *parts))
