"""Layer 3: the offline benchmark still runs (a tiny library and cache, a short track, one
run; the figures are checked only for being measured against their baselines)."""

from __future__ import annotations

import shutil

import pytest

from tests.support.bench_smoke import rows, run_bench
from tests.support.daemon import require_fuse
from tests.support.netns import require_root_network

pytestmark = pytest.mark.network


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffmpeg (setup-debian.sh)")
def test_offline_bench_produces_every_figure() -> None:
    require_fuse()
    require_root_network()
    env = {
        "MUSICFS_BENCH_OFFLINE_TRACKS": "6",
        "MUSICFS_BENCH_OFFLINE_SECONDS": "4",
        "MUSICFS_BENCH_OFFLINE_CACHE_MB": "4",
        "MUSICFS_BENCH_OFFLINE_PLAYED": "2",
        "MUSICFS_BENCH_OFFLINE_TRACK_MB": "8",
        "MUSICFS_BENCH_OFFLINE_STALL_S": "5",
        "MUSICFS_BENCH_OFFLINE_REPEATS": "1",
    }
    figures = rows(run_bench("bench_offline", env))
    scan = figures["played bytes still served offline after a full-library ffprobe scan"]
    assert 0 <= scan["value"] <= 1 and 0 <= scan["baseline"] <= 1
    assert scan["baseline_name"].startswith("plain LRU")
    played = figures["MB played of the track (blackhole 3 s in)"]
    assert played["value"] > 0 and played["baseline_name"] == "sshfs"
    assert figures["blackhole → end of the track in progress"]["value"] > 0
