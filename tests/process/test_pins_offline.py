"""Layer 2: pin a query through a running daemon, take the origin away, and every pinned
track still reads exactly while an unpinned uncached one fails fast; the pin survives a
restart (still with no origin) and shows in ``musicfs status``."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.daemon import MountedDaemon, forget_page_cache, mounted_files, musicfs_cmd
from tests.support.library import make_padded_library

pytestmark = pytest.mark.process

TRACK = 3 * 1024 * 1024 + 12345  # several chunks, the last one short


def musicfs(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        musicfs_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_pinned_tracks_play_with_the_origin_gone_and_unpinned_ones_fail_fast(
    tmp_path: Path,
) -> None:
    lib = tmp_path / "lib"
    made = make_padded_library(lib, albums=3, tracks=2, size=TRACK)
    state = tmp_path / "state"
    config = tmp_path / "musicfs.toml"
    # Room for about four tracks: two pins of 2 tracks fit, the library (6) does not.
    config.write_text('[cache]\nmax_size = "13M"\nmin_free = 0\n')
    run_dir = tmp_path / "run"
    env = {"XDG_RUNTIME_DIR": str(run_dir)}
    d = MountedDaemon(tmp_path / "mnt", [lib], state, config=config, env=env).start()
    try:
        d.wait_for_log("search index: +6 -0, 6 tracks")
        mnt = d.mountpoint
        too_big = musicfs("pin", "--state-dir", str(state), "song", env=env)
        assert too_big.returncode == 1, too_big.stderr
        assert "refused" in too_big.stderr and "for 6 tracks" in too_big.stderr
        pinned = musicfs("pin", "--state-dir", str(state), '"Album 1"', env=env)
        assert pinned.returncode == 0, pinned.stderr
        assert 'pinned "Album 1": 2 tracks' in pinned.stdout and "all cached" in pinned.stdout
        # Found from a path in the mount, no --state-dir (the runtime dir finds the daemon).
        album2 = next(p.parent for p in mounted_files(mnt) if "Album 2" in p.parent.name)
        by_path = musicfs("pin", "--no-wait", str(album2), env=env)
        assert by_path.returncode == 0, by_path.stderr
        assert musicfs("unpin", str(album2), env=env).returncode == 0

        files = {p: p.read_bytes() for p in mounted_files(mnt)}  # plays everything once
        pinned_files = [p for p in files if "Album 1" in p.parent.name]
        unpinned = [p for p in files if p not in pinned_files]
        assert len(pinned_files) == 2 and len(unpinned) == 4
        status = d.status()
        assert status["pins"]["pins"][0]["complete"] is True
        assert status["cache"]["counters"]["evicted"] > 0  # the rest churned the cache
        text = musicfs("status", "--state-dir", str(state), str(mnt), env=env).stdout
        assert "pins: 1 (2 tracks, 6.0 MiB" in text and "100% cached" in text, text

        # The NAS is gone -- and the daemon restarted, so no file it had open keeps the
        # origin readable; the search index is broken too (rebuilt from the catalog).
        lib.rename(tmp_path / "lib-gone")
        d.stop()
        (state / "search" / "meta.json").write_text("corrupted")
        d = MountedDaemon(tmp_path / "mnt", [lib], state, config=config, env=env).start()
        d.wait_for_log("rebuilding from the catalog")
        listing = musicfs("pins", "--json", "--state-dir", str(state), env=env)
        assert listing.returncode == 0, listing.stderr
        pins = json.loads(listing.stdout)
        assert [p["query"] for p in pins["pins"]] == ['"Album 1"']
        assert pins["cached_bytes"] == pins["bytes"] == 2 * TRACK
        for path in files:
            forget_page_cache(path)
        for path in pinned_files:
            assert path.read_bytes() == files[path], path
        # An unpinned track whose middle was evicted (the cache keeps every track's header
        # region) fails fast there, without hanging.
        evicted = None
        for path in unpinned:
            started = time.monotonic()
            try:
                with path.open("rb") as f:
                    f.seek(2 * 1024 * 1024)
                    f.read(4096)
            except OSError as exc:
                assert exc.errno == errno.EIO
                assert time.monotonic() - started < 3.0
                evicted = path
                break
        assert evicted is not None, "every unpinned track's middle was still cached"
    finally:
        d.stop()
        if (tmp_path / "lib-gone").exists():
            (tmp_path / "lib-gone").rename(lib)
    assert {Path(p).name for p in os.listdir(lib / "album1")} == {m.name for m in made[2:4]}
