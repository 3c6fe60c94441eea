"""An SFTP origin's listing: the tree under its root walked over one SFTP session, a few
folders at a time; symlinks followed only while they stay inside the root."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat as stat_mod
import time

import asyncssh

from musicfs.origins.base import Listing, OriginEntry
from musicfs.origins.sftp_errors import ErrorReporter

log = logging.getLogger(__name__)

LIST_PARALLEL = 8


def entry(path: str, attrs: asyncssh.SFTPAttrs) -> OriginEntry:
    mtime_ns = attrs.mtime_ns
    if mtime_ns is None:
        mtime_ns = int(attrs.mtime or 0) * 1_000_000_000
    return OriginEntry(path, int(attrs.size or 0), int(mtime_ns))


async def walk(
    sftp: asyncssh.SFTPClient, root: str, timeout: float, errors: ErrorReporter
) -> Listing:
    """Every regular file under ``root``; folders that cannot be read are the gaps.
    Raises what the SFTP requests raised (the caller maps it), or ``OriginError``."""
    page_timeout = timeout * 3
    real_root = await asyncio.wait_for(sftp.realpath(root), timeout)
    root_attrs = await asyncio.wait_for(sftp.stat(root), timeout)
    if not stat_mod.S_ISDIR(root_attrs.permissions or 0):
        raise errors.err(errno.ENOTDIR, f"{root} on the server is not a folder", "")
    entries: list[OriginEntry] = []
    gaps: list[str] = []
    limit = asyncio.Semaphore(LIST_PARALLEL)
    started = time.monotonic()

    def inside(real: str) -> bool:
        return real == real_root or real.startswith(real_root.rstrip("/") + "/")

    async def folder(rel: str) -> None:
        full = f"{root.rstrip('/')}/{rel}" if rel else root
        try:
            async with limit:
                names = await asyncio.wait_for(sftp.readdir(full), page_timeout)
        except (asyncssh.SFTPPermissionDenied, asyncssh.SFTPNoSuchFile) as exc:
            if not rel:
                raise
            log.warning(
                "sftp: origin=%s path=%r: cannot read folder, its tracks are kept as they "
                "were (%s)",
                errors.origin,
                rel,
                exc.reason,
            )
            gaps.append(rel)
            return
        subdirs = []
        for item in names:
            name = item.filename
            if isinstance(name, bytes):
                name = os.fsdecode(name)
            if name in (".", ".."):
                continue
            child = f"{rel}/{name}" if rel else name
            attrs = item.attrs
            mode = attrs.permissions or 0
            if stat_mod.S_ISLNK(mode) or attrs.type == asyncssh.FILEXFER_TYPE_SYMLINK:
                target = f"{full.rstrip('/')}/{name}"
                try:
                    async with limit:
                        real = await asyncio.wait_for(sftp.realpath(target), timeout)
                        attrs = await asyncio.wait_for(sftp.stat(target), timeout)
                except asyncssh.SFTPError as exc:
                    log.warning(
                        "sftp: origin=%s path=%r: broken symlink skipped (%s)",
                        errors.origin,
                        child,
                        exc.reason,
                    )
                    continue
                if not inside(real):
                    log.warning(
                        "sftp: origin=%s path=%r: symlink escapes the origin root, skipped",
                        errors.origin,
                        child,
                    )
                    continue
                mode = attrs.permissions or 0
            if stat_mod.S_ISDIR(mode):
                subdirs.append(child)
            elif stat_mod.S_ISREG(mode):
                entries.append(entry(child, attrs))
        await asyncio.gather(*(folder(d) for d in subdirs))

    await folder("")
    log.debug(
        "sftp: origin=%s listed %d files in %.1fs",
        errors.origin,
        len(entries),
        time.monotonic() - started,
    )
    return Listing(entries, tuple(sorted(gaps)))
