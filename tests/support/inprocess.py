"""A daemon opened in this process on real components, without a kernel mount: for layer-1
tests that drive the FUSE operations, the supervisor and the shutdown directly."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pyfuse3

from musicfs.config import (
    CacheSettings,
    FuseSettings,
    LibrarySettings,
    OriginSettings,
    Settings,
    finish,
)
from musicfs.daemon import Daemon


def settings_for(
    tmp_path: Path, lib: Path, *, cache: CacheSettings | None = None, **fuse: float
) -> Settings:
    (tmp_path / "mnt").mkdir(exist_ok=True)
    return finish(
        Settings(
            cache=cache or CacheSettings(),
            mountpoint=tmp_path / "mnt",
            state_dir=tmp_path / "state",
            cache_dir=tmp_path / "cache",
            origins=(OriginSettings(url=str(lib)),),
            library=LibrarySettings(scan_interval=0),
            fuse=FuseSettings(**fuse),  # type: ignore[arg-type]
        )
    )


async def opened_daemon(settings: Settings) -> Daemon:
    """``Daemon._open`` plus one sync, the tree published to the FUSE operations."""
    daemon = Daemon(settings)
    await daemon._open()
    assert daemon.library is not None and daemon.ops is not None
    await daemon.library.sync()
    daemon.ops.swap_tree(await daemon.library.build_tree())
    return daemon


async def read_through_fuse(
    daemon: Daemon, ino: int, size: int = 4096, offset: int = 0
) -> bytes | int:
    """open + read + release through the FUSE operations: the data, or the errno answered."""
    assert daemon.ops is not None
    info = await daemon.ops.open(ino, os.O_RDONLY, None)
    try:
        return bytes(await daemon.ops.read(info.fh, offset, size))
    except pyfuse3.FUSEError as exc:
        return int(exc.errno or errno.EIO)
    finally:
        await daemon.ops.release(info.fh)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Daemon]:
    """``opened_daemon``, shut down in order (and its lock released) on the way out."""
    daemon = await opened_daemon(settings)
    try:
        yield daemon
    finally:
        if daemon.state != "stopped":
            await daemon.shutdown()
        daemon.lock.release()
