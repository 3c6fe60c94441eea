"""Layer 2, gap 5.1 (the FUSE <-> event loop deadlock): 100 concurrent reads of uncached
tracks against an origin that hangs, behind a real mount, while ``ls -R`` stays as fast as
with a healthy origin and cached tracks keep playing (see the note on the kernel's
background-request limit below). No request outlives its deadline and the daemon answers
afterwards.

The origin hangs through the ``origin.local.read`` failpoint (every read blocks its worker
thread for a minute). The cached album was played by an earlier run of the daemon with a
healthy origin; the chunk cache on disk survives the restart.
"""

from __future__ import annotations

import errno
import hashlib
import os
import statistics
import subprocess
import threading
import time
from pathlib import Path

from tests.support.daemon import MountedDaemon, forget_page_cache
from tests.support.library import make_library

DEADLINE = 3.0
OPERATION = 1.0
SLACK = 2.0  # the machine is shared and loaded
BLOCK = 128 * 1024
CHUNK = 1024 * 1024


def config(path: Path) -> Path:
    path.write_text(
        "[library]\nscan_interval = 0\n"
        f"[fuse]\nread_deadline = {DEADLINE}\n"
        f"[timeouts]\noperation = {OPERATION}\nhealth_interval = '500ms'\n"
        "health_max_backoff = '2s'\n"
    )
    return path


def ls_r(mnt: Path) -> float:
    started = time.monotonic()
    subprocess.run(["ls", "-lR", str(mnt)], check=True, capture_output=True, timeout=60)
    return time.monotonic() - started


def play(tracks: list[Path]) -> tuple[float, float, str]:
    """Read tracks start to end in 128 KiB blocks: (total s, slowest read s, sha256)."""
    h = hashlib.sha256()
    slowest = 0.0
    started = time.monotonic()
    for track in tracks:
        fd = os.open(track, os.O_RDONLY)
        try:
            pos = 0
            while True:
                began = time.monotonic()
                data = os.pread(fd, BLOCK, pos)
                slowest = max(slowest, time.monotonic() - began)
                if not data:
                    break
                h.update(data)
                pos += len(data)
        finally:
            os.close(fd)
    return time.monotonic() - started, slowest, h.hexdigest()


def test_hundred_reads_on_a_hanging_origin_starve_nothing(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=4, tracks=5, pad_to=3 * CHUNK)
    cfg = config(tmp_path / "musicfs.toml")
    state = tmp_path / "state"

    # Run 1, healthy origin: play album A (it lands in the chunk cache), measure baselines.
    with MountedDaemon(tmp_path / "mnt", [lib], state, config=cfg) as d:
        d.wait_for_log("tree: generation")
        files = sorted(p for p in d.mountpoint.rglob("*") if p.is_file())
        assert len(files) == 20
        album = sorted({p.parent for p in files})[0]
        cached = sorted(p for p in files if p.parent == album)
        _, _, expected = play(cached)
        time.sleep(1.0)  # write-behind
        for track in cached:
            forget_page_cache(track)
        ls_healthy = min(ls_r(d.mountpoint) for _ in range(3))
        play_healthy, slowest_healthy, digest = play(cached)
        assert digest == expected
        rel_cached = [p.relative_to(d.mountpoint) for p in cached]
        rel_uncached = [p.relative_to(d.mountpoint) for p in files if p.parent != album]

    # Run 2: every origin read now hangs.
    hang = {"MUSICFS_FAILPOINTS": "origin.local.read=sleep(60000)"}
    with MountedDaemon(tmp_path / "mnt", [lib], state, config=cfg, env=hang) as d:
        d.wait_for_log("tree: generation")
        mnt = d.mountpoint
        uncached = [mnt / r for r in rel_uncached]
        # 100 reads over 45 distinct uncached chunks (15 tracks x their 3 chunks)
        n = len(uncached)
        targets = [(uncached[i % n], (i // n) % 3 * CHUNK + 4096) for i in range(100)]
        results: list[tuple[float, BaseException | int]] = []
        lock = threading.Lock()
        go = threading.Event()

        def storm(path: Path, offset: int) -> None:
            go.wait()
            began = time.monotonic()
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    outcome: BaseException | int = len(os.pread(fd, BLOCK, offset))
                finally:
                    os.close(fd)
            except OSError as exc:
                outcome = exc
            with lock:
                results.append((time.monotonic() - began, outcome))

        threads = [threading.Thread(target=storm, args=t, daemon=True) for t in targets]
        for t in threads:
            t.start()
        go.set()
        time.sleep(0.2)  # the storm is on: every uncached read is stuck on the origin
        ls_storm = ls_r(mnt)
        play_storm, slowest_storm, digest = play([mnt / r for r in rel_cached])
        for t in threads:
            t.join(DEADLINE * 3 + 10)
        assert not any(t.is_alive() for t in threads), "reads outlived their deadline"

        assert digest == expected, "cached tracks must play, byte for byte"
        assert len(results) == 100
        durations = [took for took, _ in results]
        errors = [o for _, o in results if isinstance(o, OSError)]
        assert len(errors) == 100, [o for _, o in results if not isinstance(o, OSError)]
        assert all(e.errno == errno.EIO for e in errors)
        assert max(durations) < DEADLINE + SLACK, f"slowest uncached read {max(durations):.2f}s"
        # Metadata never queues behind hung reads: lookups and readdir are not subject to
        # the kernel's limit on background requests, and MusicFS has workers to spare.
        assert ls_storm < ls_healthy + 0.5 + SLACK / 4, (ls_healthy, ls_storm)
        # Cached reads do queue, in the kernel: page-cache reads are FUSE *background*
        # requests, at most max_background (libfuse's 12; pyfuse3 cannot raise it) are
        # handed to the daemon at once, and 100 readers of a hung origin fill those slots
        # until the first attempts time out (timeouts.operation) and the origin is known
        # to be down. So during the storm a cached read waits at most about one operation
        # timeout -- and once the origin is declared down, not at all.
        assert slowest_storm < OPERATION + SLACK, (slowest_healthy, slowest_storm)
        for track in rel_cached:
            forget_page_cache(mnt / track)
        play_after, slowest_after, digest = play([mnt / r for r in rel_cached])
        assert digest == expected
        assert slowest_after < 0.2 + SLACK / 4, (slowest_healthy, slowest_after)

        # The daemon still answers: status, listing, and it knows it is offline.
        status = d.status()
        assert status["mode"] == "offline", status["origins"]
        assert status["fuse"]["read_errors"] >= 100
        assert len([p for p in mnt.rglob("*") if p.is_file()]) == 20
        print(
            f"\n5.1: 100 hung reads -> EIO in p50 {statistics.median(durations):.3f}s / "
            f"max {max(durations):.3f}s (deadline {DEADLINE}s); ls -R {ls_healthy:.3f}s -> "
            f"{ls_storm:.3f}s; cached album {play_healthy:.3f}s -> {play_storm:.3f}s "
            f"(after the storm {play_after:.3f}s); slowest cached read {slowest_healthy:.4f}s "
            f"-> {slowest_storm:.4f}s (after {slowest_after:.4f}s)"
        )
