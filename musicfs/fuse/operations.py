"""pyfuse3 operations: translate kernel requests into tree lookups and reader calls.

Rules every handler follows:
* metadata (lookup, getattr, readdir, statfs) only touches the in-memory tree snapshot,
  so it answers instantly whatever the origins are doing (statfs reads the cache disk's
  free space in a worker thread, at most every ``FREE_SPACE_TTL`` seconds);
* ``read`` is bounded by ``read_deadline``: data or EIO, never a hang;
* anything unexpected becomes EIO plus a logged traceback -- an exception escaping a
  handler would end pyfuse3's main loop and freeze every player on the mount;
* every write-type request answers EROFS.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from musicfs.cache.reader import Reader
from musicfs.catalog.tree import DIR_MODE, FILE_MODE, Node, TreeView
from musicfs.failpoints import async_fail_point
from musicfs.fuse.search_folder import SearchFolder
from musicfs.fuse.settings import FuseSettings
from musicfs.origins.base import OriginError
from musicfs.resources import shortage

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

BLOCK_SIZE = 128 * 1024
# Errnos a player may usefully see; everything else is reported as EIO.
_PASS_THROUGH = {errno.EACCES, errno.EIO, errno.EROFS}


# How long a worker thread running Python (a tree publish, the search index, a sync's
# bookkeeping) may hold the GIL while the event loop waits for it to answer a FUSE
# request. CPython's default of 5 ms is the p99 of every lookup during a publish.
GIL_SWITCH_INTERVAL = 0.0005

# statfs is called very often (every `df`, file managers, some players): the free space
# it reports is read at most this often, in a worker thread with a short deadline.
FREE_SPACE_TTL = 5.0
FREE_SPACE_DEADLINE = 0.2


@dataclass
class FreeSpace:
    """What ``df`` shows free on the mount: the free space of the cache's filesystem.

    The mount itself is read-only and uses no space; reporting zero free (100% full)
    trips disk-full monitors and desktop warnings. The cache disk's free space is true
    -- it is how much more of the library can be kept locally -- and harmless."""

    directory: Path | None
    blocks: int = 0  # free, in BLOCK_SIZE units
    files: int = 0  # free inodes
    checked: float = float("-inf")

    async def refresh(self) -> None:
        now = time.monotonic()
        if self.directory is None or now - self.checked < FREE_SPACE_TTL:
            return
        self.checked = now
        with trio.move_on_after(FREE_SPACE_DEADLINE):
            try:
                st = await trio.to_thread.run_sync(
                    os.statvfs, self.directory, abandon_on_cancel=True
                )
            except OSError as exc:
                log.debug("statfs: cache disk %s: %s", self.directory, exc)
                return
            self.blocks = st.f_bavail * st.f_frsize // BLOCK_SIZE
            self.files = st.f_favail


@dataclass
class DirSnapshot:
    """An open folder's entries as they were at opendir: readdir offsets index into it,
    whatever is published meanwhile."""

    listing: list[bytes]
    attrs: list[pyfuse3.EntryAttributes]


@dataclass
class FuseCounters:
    """What the FUSE operations counted (``FuseSession.statistics()`` snapshots it)."""

    reads: int = 0
    read_bytes: int = 0
    read_errors: int = 0
    deadline_misses: int = 0
    inflight: int = 0
    unexpected: int = 0
    cancelled: int = 0  # answered EIO because the workers were torn down under them
    max_read_seconds: float = 0.0
    by_op: dict[str, int] = field(default_factory=dict)


def _errno_for(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno in _PASS_THROUGH:
        return exc.errno
    return errno.EIO


Handler = Callable[P, Coroutine[Any, Any, R]]


def _guard(name: str) -> Callable[[Handler[P, R]], Handler[P, R]]:
    """Turn anything but FUSEError into a logged EIO, and count the call."""

    def wrap(fn: Handler[P, R]) -> Handler[P, R]:
        @functools.wraps(fn)
        async def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            self = args[0]
            stats: FuseCounters = self.stats  # type: ignore[attr-defined]
            stats.by_op[name] = stats.by_op.get(name, 0) + 1
            try:
                return await fn(*args, **kwargs)
            except pyfuse3.FUSEError:
                raise
            except trio.Cancelled:
                # The FUSE workers are being torn down under this request (a forced exit,
                # or pyfuse3's main loop failing and being restarted). The kernel still
                # waits for an answer, and without one the caller hangs until the mount
                # is aborted: answer EIO. The cancellation is not lost: it is raised again
                # at the worker's next checkpoint.
                stats.cancelled += 1
                raise pyfuse3.FUSEError(errno.EIO) from None
            except Exception as exc:
                short = shortage(exc)
                if short is not None:
                    log.warning("fuse %s: %s, errno=EIO", name, short.strerror)
                    raise pyfuse3.FUSEError(errno.EIO) from None
                stats.unexpected += 1
                log.exception("fuse %s: unexpected error, answering EIO", name)
                raise pyfuse3.FUSEError(errno.EIO) from None

        return inner

    return wrap


def _erofs(name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def refuse(self: MusicOperations, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    refuse.__name__ = name
    return refuse


class MusicOperations(pyfuse3.Operations):  # type: ignore[misc]
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        tree: TreeView,
        reader: Reader,
        settings: FuseSettings,
        *,
        uid: int | None = None,
        gid: int | None = None,
        free_space_of: Path | None = None,
    ):
        super().__init__()
        self.free_space = FreeSpace(free_space_of)
        self.tree = tree
        self.reader = reader
        self.settings = settings
        self.stats = FuseCounters()
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self._handles: dict[int, Node] = {}
        self._dir_handles: dict[int, DirSnapshot] = {}
        self._next_fh = itertools.count(1)
        # Set by the daemon during shutdown: new reads are refused, in-flight ones drain.
        self.draining = False
        # One scope per in-flight read, cancelled by ``abort_inflight`` at the end of the
        # drain window so that every read still running answers EIO.
        self._inflight: set[trio.CancelScope] = set()
        # ``/.search/<query>/`` (fuse/search_folder.py), when the daemon has a search index.
        self.search_folder: SearchFolder | None = None

    # -- tree ------------------------------------------------------------------------

    def swap_tree(self, tree: TreeView) -> TreeView:
        """Publish a new snapshot; returns the old one."""
        old, self.tree = self.tree, tree
        return old

    def _node(self, ino: int) -> Node:
        node = self.tree.get(ino)
        if node is None and self.search_folder is not None:
            node = self.search_folder.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        nlink = 2 + node.subdirs if node.is_dir else 1
        return self._attributes(node.ino, node.mode, nlink, node.size, node.mtime_ns)

    def _attributes(
        self, ino: int, mode: int, nlink: int, size: int, mtime_ns: int
    ) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()  # generation and st_rdev: 0
        attr.st_ino = ino
        attr.entry_timeout = self.settings.attr_timeout
        attr.attr_timeout = self.settings.attr_timeout
        attr.st_mode = mode
        attr.st_nlink = nlink
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_size = size
        attr.st_blksize = BLOCK_SIZE
        attr.st_blocks = (size + 511) // 512
        attr.st_atime_ns = mtime_ns
        attr.st_mtime_ns = mtime_ns
        attr.st_ctime_ns = mtime_ns
        return attr

    def _listing(self, node: Node) -> DirSnapshot:
        rows = getattr(self.tree, "entry_rows", None)
        if rows is None or node.children:
            entries = self.tree.entries(node)
            return DirSnapshot([n for n, _ in entries], [self._attrs(c) for _, c in entries])
        # The served tree's rows straight to attributes: no node objects per entry (a
        # warm `ls -R` is mostly this).
        names, attrs = [], []
        for ino, _, name, track_id, size, mtime_ns, subdirs in rows(node.ino):
            names.append(name)
            if track_id is None:
                attrs.append(self._attributes(ino, DIR_MODE, 2 + subdirs, 0, mtime_ns))
            else:
                attrs.append(self._attributes(ino, FILE_MODE, 1, size, mtime_ns))
        return DirSnapshot(names, attrs)

    # -- metadata --------------------------------------------------------------------

    @_guard("lookup")
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if name == b".":
            return self._attrs(parent)
        if name == b"..":
            return self._attrs(self._node(parent.parent))
        node = None
        if self.search_folder is not None:
            node = await self.search_folder.lookup(parent_inode, name, self.tree)
        node = node or self.tree.lookup(parent_inode, name)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(node)

    @_guard("getattr")
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.tree.get(inode)
        if node is None and self.search_folder is not None:
            node = self.search_folder.get(inode)
        if node is None:
            # A file still open after a sync removed it keeps its last attributes.
            node = next((n for n in self._handles.values() if n.ino == inode), None)
            if node is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(node)

    @_guard("opendir")
    async def opendir(self, inode: int, ctx: Any) -> int:
        node = self._node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if self.search_folder is not None:
            node = await self.search_folder.refresh(node, self.tree)
        snapshot = self._listing(node)
        fh = next(self._next_fh)
        self._dir_handles[fh] = snapshot
        return fh

    @_guard("readdir")
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        snapshot = self._dir_handles.get(fh)
        if snapshot is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        names, attrs = snapshot.listing, snapshot.attrs
        for index in range(start_id, len(names)):
            if not pyfuse3.readdir_reply(token, names[index], attrs[index], index + 1):
                break

    @_guard("releasedir")
    async def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)

    @_guard("statfs")
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        tree, free = self.tree, self.free_space
        await free.refresh()
        data = pyfuse3.StatvfsData()
        used = (tree.total_bytes + BLOCK_SIZE - 1) // BLOCK_SIZE
        data.f_bsize = BLOCK_SIZE
        data.f_frsize = BLOCK_SIZE
        data.f_blocks = used + free.blocks
        data.f_bfree = free.blocks
        data.f_bavail = free.blocks
        data.f_files = tree.node_count + free.files
        data.f_ffree = free.files
        data.f_favail = free.files
        data.f_namemax = 255
        return data

    # No extended attributes. ENOSYS (not ENOATTR / an empty list) makes the kernel stop
    # asking: `ls -l` asks for two per file, each a round trip through the daemon.
    @_guard("getxattr")
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_guard("listxattr")
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_guard("access")
    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        self._node(inode)
        return not mode & os.W_OK

    @_guard("readlink")
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        self._node(inode)
        raise pyfuse3.FUSEError(errno.EINVAL)

    # -- data ------------------------------------------------------------------------

    @_guard("open")
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        node.track = self.tree.track_of(node)
        if node.track is None:
            raise pyfuse3.FUSEError(errno.ENOENT)  # removed from the catalog since
        fh = next(self._next_fh)
        self._handles[fh] = node
        # A track version never changes under its inode (a new version is a new tree
        # node whose attributes invalidate the page cache), so the kernel may keep pages.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_guard("read")
    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self._handles.get(fh)
        if node is None or node.track is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        track = node.track
        if self.draining:
            raise pyfuse3.FUSEError(errno.EIO)
        stats = self.stats
        stats.reads += 1
        stats.inflight += 1
        started = time.monotonic()
        try:
            with trio.CancelScope() as abort:
                self._inflight.add(abort)
                # A stand-in for a wedged request that ignores its deadline (watchdog tests).
                await async_fail_point("fuse.read")
                with trio.move_on_after(self.settings.read_deadline) as scope:
                    data = await self.reader.read(track, off, size, handle=fh)
            if abort.cancelled_caught:
                stats.read_errors += 1
                log.warning(
                    "read: path=%r offset=%d: aborted by shutdown after the drain timeout, "
                    "errno=EIO",
                    track.path,
                    off,
                )
                raise pyfuse3.FUSEError(errno.EIO)
            if scope.cancelled_caught:
                stats.deadline_misses += 1
                stats.read_errors += 1
                log.warning(
                    "read: path=%r offset=%d: no data within the %.1fs deadline, errno=EIO",
                    track.path,
                    off,
                    self.settings.read_deadline,
                )
                raise pyfuse3.FUSEError(errno.EIO)
        except OSError as exc:
            stats.read_errors += 1
            code = _errno_for(exc)
            if not isinstance(exc, OriginError):
                log.warning(
                    "read: path=%r offset=%d: %s, errno=%s",
                    track.path,
                    off,
                    exc,
                    errno.errorcode.get(code),
                )
            raise pyfuse3.FUSEError(code) from None
        finally:
            self._inflight.discard(abort)
            stats.inflight -= 1
            elapsed = time.monotonic() - started
            stats.max_read_seconds = max(stats.max_read_seconds, elapsed)
        stats.read_bytes += len(data)
        return data

    def abort_inflight(self) -> int:
        """Make every read still running answer EIO now; returns how many there were."""
        scopes = list(self._inflight)
        for scope in scopes:
            scope.cancel()
        return len(scopes)

    @_guard("release")
    async def release(self, fh: int) -> None:
        self._handles.pop(fh, None)
        self.reader.closed(fh)

    @_guard("flush")
    async def flush(self, fh: int) -> None:
        # Nothing to flush on a read-only file system. ENOSYS rather than success tells the
        # kernel never to send FLUSH again, so close(2) stops costing a round trip through
        # the daemon (a quarter of the requests when a player or `cat` walks small files).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    # -- everything that would change the tree ---------------------------------------

    setattr = _erofs("setattr")  # type: ignore[assignment]
    mknod = _erofs("mknod")  # type: ignore[assignment]
    mkdir = _erofs("mkdir")  # type: ignore[assignment]
    unlink = _erofs("unlink")  # type: ignore[assignment]
    rmdir = _erofs("rmdir")  # type: ignore[assignment]
    symlink = _erofs("symlink")  # type: ignore[assignment]
    rename = _erofs("rename")  # type: ignore[assignment]
    link = _erofs("link")  # type: ignore[assignment]
    write = _erofs("write")  # type: ignore[assignment]
    create = _erofs("create")  # type: ignore[assignment]
    setxattr = _erofs("setxattr")  # type: ignore[assignment]
    removexattr = _erofs("removexattr")  # type: ignore[assignment]

    @_guard("fsync")
    async def fsync(self, fh: int, datasync: bool) -> None:
        return None


def mount_options(settings: FuseSettings) -> set[str]:
    options = {"fsname=musicfs", "subtype=musicfs", "ro", "default_permissions", "noatime"}
    if settings.allow_other:
        options.add("allow_other")
    return options
