"""Fixtures for the end-to-end layer: albums encoded once per session, a MusicFS mount of
them on a local origin, and the map from each mounted track to its origin file."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.albums import LOSSLESS, MIXED, make_albums
from tests.support.daemon import MountedDaemon, unmount_leftovers, wait_for_files
from tests.support.library import sha256
from tests.support.players import require_clients


@pytest.fixture(scope="session")
def world() -> Iterator[Path]:
    """A scratch folder every user can traverse (an SFTP server's user reads from it)."""
    path = Path(tempfile.mkdtemp(prefix="musicfs-e2e-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        unmount_leftovers(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def albums(world: Path) -> list[Path]:
    """Two albums on disk: six tracks in six formats, and six longer FLACs."""
    require_clients("ffmpeg", "ffprobe")
    return make_albums(world / "lib", MIXED, LOSSLESS)


def origin_of(mounted: list[Path], origin: list[Path]) -> dict[Path, Path]:
    """Each mounted track's origin file, matched by content: the mount must hold every
    origin track once, byte for byte."""
    by_hash = {sha256(p): p for p in origin}
    pairs = {m: by_hash.get(sha256(m)) for m in mounted}
    missing = sorted(set(origin) - set(pairs.values()))
    strangers = [m for m, o in pairs.items() if o is None]
    assert not missing and not strangers, f"not in the mount: {missing}; unknown: {strangers}"
    return {m: o for m, o in pairs.items() if o is not None}


def origin_by_size(mounted: list[Path], origin: list[Path]) -> dict[Path, Path]:
    """The same map without reading a byte through the mount (reading would cache it):
    by file size, which differs between every pair of generated tracks."""
    by_size = {p.stat().st_size: p for p in origin}
    assert len(by_size) == len(origin), "two generated tracks have the same size"
    pairs = {m: by_size[m.stat().st_size] for m in mounted}
    assert sorted(pairs.values()) == sorted(origin), pairs
    return pairs


@pytest.fixture(scope="module")
def local_mount(world: Path, albums: list[Path]) -> Iterator[tuple[Path, dict[Path, Path]]]:
    """MusicFS on the albums' folder (a local origin): its mount point and the track map."""
    base = Path(tempfile.mkdtemp(prefix="local-", dir=world))
    daemon = MountedDaemon(base / "mnt", [world / "lib"], base / "state")
    with daemon:
        files = wait_for_files(daemon.mountpoint, len(albums), timeout=60)
        yield daemon.mountpoint, origin_of(files, albums)
