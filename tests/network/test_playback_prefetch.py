"""Layer 3: a track in progress when the NAS goes away plays to its end. A player reads a
48 MB track at 2 MB/s over SFTP; 3 s in, the sshd is blackholed. Playback prefetch has
fetched the rest of the track by then, so every later read is served, bytes exact, on
time, until the last one."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.network.test_outages import sftp_origin, write_config
from tests.support.daemon import MountedDaemon
from tests.support.netns import SSHServer

pytestmark = pytest.mark.network

TRACK = 48 * 1024 * 1024
BLOCK = 128 * 1024
RATE = 2 * 1024 * 1024  # bytes a second: a player, not a copy


def test_a_track_plays_to_its_end_after_the_nas_is_blackholed(
    sshd: SSHServer, world_dir: Path, tmp_path: Path
) -> None:
    lib = world_dir / "lib"
    album = lib / "Artist" / "Album"
    album.mkdir(parents=True)
    content = os.urandom(TRACK)
    (album / "01 long.flac").write_bytes(content)  # no tags: listed under its file name
    for p in [lib, *lib.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    config = write_config(tmp_path / "musicfs.toml", [sftp_origin(sshd, lib)])
    with MountedDaemon(tmp_path / "mnt", [], tmp_path / "state", config=config) as d:
        deadline = time.monotonic() + 60
        files: list[Path] = []
        while not files and time.monotonic() < deadline:
            files = [p for p in d.mountpoint.rglob("*") if p.is_file()]
            time.sleep(0.1)
        assert len(files) == 1
        got = bytearray()
        slowest = 0.0
        started = time.monotonic()
        blackholed = None
        with files[0].open("rb", buffering=0) as f:
            while len(got) < TRACK:
                if blackholed is None and time.monotonic() - started >= 3.0:
                    sshd.ns.blackhole()
                    blackholed = time.monotonic()
                began = time.monotonic()
                block = f.read(BLOCK)  # an EIO here fails the test: the song stopped
                slowest = max(slowest, time.monotonic() - began)
                assert block, f"short read at {len(got)}"
                got += block
                # Paced like playback: the next block when the last one is due.
                pause = started + len(got) / RATE - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
        ended = time.monotonic()
        sshd.ns.unblackhole()
    assert blackholed is not None and ended - blackholed > 15  # most of it played offline
    assert bytes(got) == content
    assert slowest < 2.0, f"a read took {slowest:.2f}s"
