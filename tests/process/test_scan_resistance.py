"""Layer 2: a nightly library scan no longer costs the offline music. Through a real mount
with a 12 MiB cache: play two tracks, then let ``ffprobe`` walk a library of real FLAC
tracks (with covers) ten times the cache, then take the origin away -- the played tracks
still play, bytes exact."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.albums import make_scanner_library
from tests.support.daemon import MountedDaemon, forget_page_cache, mounted_files, scan
from tests.support.library import sha256

pytestmark = pytest.mark.process

CONFIG = """
[library]
scan_interval = 0

[cache]
max_size = "12M"
min_free = "1M"
memory = "2M"
"""


def play(path: Path) -> str:
    """Read a track start to end in 128 KiB reads, as a player does; its sha256."""
    forget_page_cache(path)
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        while block := f.read(128 * 1024):
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffmpeg (setup-debian.sh)")
def test_a_scan_of_ten_times_the_cache_keeps_the_played_album(tmp_path: Path) -> None:
    lib, state = tmp_path / "lib", tmp_path / "state"
    made = make_scanner_library(lib, 40, 0, flac_seconds=12, mp3_seconds=0)
    assert sum(p.stat().st_size for p in made) > 10 * 12 * 1024 * 1024
    scan(lib, state)
    expected = {p.relative_to(lib).as_posix(): sha256(p) for p in lib.rglob("*") if p.is_file()}
    config = tmp_path / "musicfs.toml"
    config.write_text(CONFIG)
    with MountedDaemon(tmp_path / "mnt", [lib], state, config=config) as d:
        files = mounted_files(d.mountpoint)
        assert len(files) == 40
        played = {p: play(p) for p in files[:2]}  # the start of an album, played through
        assert set(played.values()) <= set(expected.values())
        for path in files:  # the nightly scanner: every track's head (and tail)
            forget_page_cache(path)
            subprocess.run(
                ["ffprobe", "-v", "error", "-show_format", "-show_streams", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
                check=False,
            )
        os.rename(lib, tmp_path / "lib-gone")  # the NAS is unplugged
        for path, digest in played.items():
            assert play(path) == digest, f"{path.name} no longer plays offline"
