"""Offline playback (issue 10, "Measure"): what still plays when the NAS goes away.

1. **Scan resistance.** A mount with a small chunk cache over a local origin of real FLAC
   tracks with covers (about ten times the cache): play the album's first six tracks
   through (``PLAYED``), let ``ffprobe`` walk every track (a nightly tag scanner),
   unplug the origin (the folder is renamed away), then read the played tracks again,
   128 KiB at a time. The figure is the
   fraction of the played bytes still served. "Before" is the plain LRU cache the
   project had at commit ``ba4e6da``: its ``musicfs`` package is extracted with
   ``git archive`` into a temporary folder and run by the same interpreter
   (``PYTHONPATH``, ``PYTHONSAFEPATH``), on the same library, in the same run.
2. **Blackhole mid-track.** A player reads a 48 MB track at 2 MB/s over SFTP (an OpenSSH
   sshd in a network namespace); 3 s in, every packet into the server's namespace is
   dropped (nftables). The figure is the time from the blackhole to the end of the track,
   against ``sshfs`` on the same sshd; a read that returns nothing for ``STALL_S`` ends
   that player's run ("stalled"), and the bytes it played are reported.

Knobs: ``MUSICFS_BENCH_OFFLINE_TRACKS`` (80), ``MUSICFS_BENCH_OFFLINE_SECONDS`` (12 s of
FLAC a track, ~3.4 MB), ``MUSICFS_BENCH_OFFLINE_CACHE_MB`` (24), ``..._PLAYED`` (6),
``MUSICFS_BENCH_OFFLINE_TRACK_MB`` (48), ``MUSICFS_BENCH_OFFLINE_RATE_MB`` (2),
``MUSICFS_BENCH_OFFLINE_STALL_S`` (30), ``MUSICFS_BENCH_OFFLINE_REPEATS`` (3).

Run: ``python -m bench offline`` (or ``make bench BENCH_ARGS=offline``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from bench import ROOT, Report
from bench.peers import Mounted, MusicFS, Sshfs, require_tools, wait_for_tracks

log = logging.getLogger("bench.offline")

BEFORE = "ba4e6da"  # the plain LRU cache, before issue 10
BLOCK = 128 * 1024  # a player's read


def _env(name: str, default: float) -> float:
    return float(os.environ.get(f"MUSICFS_BENCH_OFFLINE_{name}", default))


# --- 1. scan resistance ---------------------------------------------------------------


def _extract(commit: str, into: Path) -> Path:
    """The ``musicfs`` package as it was at ``commit``, for ``PYTHONPATH``."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "musicfs"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, timeout=60)
    return into


def _play(path: Path) -> None:
    from tests.support.daemon import forget_page_cache

    forget_page_cache(path)
    with path.open("rb", buffering=0) as f:
        while f.read(BLOCK):
            pass


def _chunks_served(path: Path) -> tuple[int, int]:
    """(bytes of ``path`` that read back, its size): every 128 KiB block is read, as a
    player would, and a block that fails (a chunk the origin would have had to send) is
    skipped."""
    from tests.support.daemon import forget_page_cache

    forget_page_cache(path)
    served = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        for offset in range(0, size, BLOCK):
            with suppress(OSError):
                served += len(os.pread(fd, BLOCK, offset))
    finally:
        os.close(fd)
    return served, size


def _scan_run(
    work: Path, lib: Path, name: str, cache_mb: int, plays: int, pythonpath: str
) -> float:
    """Play ``plays`` tracks, ffprobe the library, unplug it: the played bytes served."""
    from tests.support.daemon import MountedDaemon

    base = work / name
    base.mkdir()
    config = base / "musicfs.toml"
    config.write_text(
        "[library]\nscan_interval = 0\n\n[cache]\n"
        f'max_size = "{cache_mb}M"\nmin_free = "1M"\nmemory = "2M"\n'
    )
    # Safe path: ``-m`` would otherwise put the current folder (this code) first.
    env = {"PYTHONPATH": pythonpath, "PYTHONSAFEPATH": "1"} if pythonpath else {}
    tracks = len(list(lib.rglob("*.flac")))
    with MountedDaemon(base / "mnt", [lib], base / "state", config=config, env=env) as d:
        files = [p for p in wait_for_tracks(d.mountpoint, tracks) if p.suffix == ".flac"]
        played = files[:plays]
        for path in played:
            _play(path)
        for path in files:
            subprocess.run(
                ["ffprobe", "-v", "error", "-show_format", "-show_streams", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=120,
                check=False,
            )
        gone = lib.with_name(lib.name + "-gone")
        os.rename(lib, gone)  # the NAS is unplugged
        try:
            counts = [_chunks_served(p) for p in played]
        finally:
            os.rename(gone, lib)
    return sum(s for s, _ in counts) / sum(t for _, t in counts)


def _scan_resistance(report: Report, work: Path, repeats: int) -> None:
    from tests.support.albums import make_scanner_library

    tracks = int(_env("TRACKS", 80))
    cache_mb = int(_env("CACHE_MB", 24))
    plays = int(_env("PLAYED", 6))
    lib = work / "scanlib"
    made = make_scanner_library(lib, tracks, 0, flac_seconds=_env("SECONDS", 12), mp3_seconds=0)
    size = sum(p.stat().st_size for p in made)
    before = str(_extract(BEFORE, work / "before"))
    after, lru = [], []
    for run in range(repeats):
        log.info("run %d: scan with the segmented LRU (this code)", run + 1)
        after.append(_scan_run(work, lib, f"after{run}", cache_mb, plays, ""))
        log.info("run %d: scan with the plain LRU (%s)", run + 1, BEFORE)
        lru.append(_scan_run(work, lib, f"before{run}", cache_mb, plays, before))
    report.setup["scan"] = {
        "tracks": tracks,
        "library_mb": round(size / 1e6, 1),
        "cache_mb": cache_mb,
        "played_tracks": plays,
        "before": f"commit {BEFORE} (plain LRU), run from `git archive` with PYTHONPATH",
    }
    report.add_runs(
        "played bytes still served offline after a full-library ffprobe scan",
        after,
        "fraction",
        baseline_samples=lru,
        baseline_name=f"plain LRU at {BEFORE}",
        higher_is_better=True,
        note=f"{plays} of {tracks} FLAC tracks played, {size / 1e6:.0f} MB, {cache_mb} MiB cache",
    )


# --- 2. blackhole mid-track -----------------------------------------------------------


@dataclass
class Outcome:
    played: int  # bytes read before the end, an error or the stall
    after_blackhole: float  # seconds from the blackhole to the end (or to the error/stall)
    result: str  # "ended", "error: ...", "stalled"


class _Player(threading.Thread):
    """Reads a file at ``rate`` bytes a second in 128 KiB reads, noting its progress."""

    def __init__(self, path: Path, rate: float):
        super().__init__(daemon=True)
        self.path, self.rate = path, rate
        self.started = time.monotonic()
        self.played = 0
        self.last_progress = self.started
        self.finished: float | None = None
        self.error = ""

    def run(self) -> None:
        try:
            with self.path.open("rb", buffering=0) as f:
                while block := f.read(BLOCK):
                    self.played += len(block)
                    self.last_progress = time.monotonic()
                    pause = self.started + self.played / self.rate - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
        except OSError as e:
            self.error = f"error: {e.strerror or e}"
        self.finished = time.monotonic()


def _listen(mounted: Mounted, count: int, ns: object, rate: float, stall: float) -> Outcome:
    from tests.support.netns import NetNS

    assert isinstance(ns, NetNS)
    track = wait_for_tracks(mounted.path, count)[0]
    player = _Player(track, rate)
    player.start()
    time.sleep(3.0)
    ns.blackhole()
    blackholed = time.monotonic()
    try:
        while player.finished is None and time.monotonic() - player.last_progress < stall:
            time.sleep(0.05)
    finally:
        ns.unblackhole()
    if player.finished is None:  # unmounting the peer ends the hung read
        return Outcome(player.played, player.last_progress - blackholed, "stalled")
    return Outcome(player.played, player.finished - blackholed, player.error or "ended")


def _blackhole(report: Report, work: Path, repeats: int) -> None:
    from tests.support.netns import NetNS, SSHServer

    size = int(_env("TRACK_MB", 48) * 1e6)
    rate = _env("RATE_MB", 2) * 1e6
    stall = _env("STALL_S", 30)
    lib = work / "sftplib"
    album = lib / "Artist" / "Album"
    album.mkdir(parents=True)
    (album / "01 long.flac").write_bytes(os.urandom(size))  # untagged: listed by name
    for p in [lib, *lib.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    ours: list[Outcome] = []
    theirs: list[Outcome] = []
    with NetNS() as ns:
        sshd = SSHServer(ns, work, user="root").start()
        origin = sshd.origin(lib)
        peers: list[tuple[list[Outcome], AbstractContextManager[Mounted]]] = []
        for run in range(repeats):
            peers = [
                (ours, MusicFS(f"bh{run}", origin, work).mount(fresh=True)),
                (theirs, Sshfs(sshd, lib, work).mount(fresh=True)),
            ]
            for outcomes, mount in peers:
                log.info("run %d: blackhole during playback (%d)", run + 1, len(outcomes))
                with mount as mounted:
                    outcomes.append(_listen(mounted, 1, ns, rate, stall))
    remaining = (size - 3.0 * rate) / rate
    report.setup["blackhole"] = {
        "track_mb": size / 1e6,
        "rate_mb_s": rate / 1e6,
        "blackhole_at_s": 3.0,
        "stall_bound_s": stall,
    }
    report.add_runs(
        "blackhole → end of the track in progress",
        [o.after_blackhole for o in ours],
        "s",
        baseline_samples=[remaining],
        baseline_name="the track's remaining playing time",
        note="MusicFS: " + ", ".join(o.result for o in ours),
    )
    report.add_runs(
        "MB played of the track (blackhole 3 s in)",
        [o.played / 1e6 for o in ours],
        "MB",
        baseline_samples=[o.played / 1e6 for o in theirs],
        baseline_name="sshfs",
        higher_is_better=True,
        note="sshfs: " + ", ".join(o.result for o in theirs),
    )
    for o in theirs:
        report.notes.append(
            f"sshfs: {o.result} {o.after_blackhole:.1f} s after the blackhole, "
            f"{o.played / 1e6:.1f} of {size / 1e6:.0f} MB played"
            + (f" (no read returned for {stall:.0f} s)" if o.result == "stalled" else "")
        )


@contextmanager
def _workdir() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="musicfs-bench-offline-"))
    os.chmod(work, 0o755)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> Report:
    require_tools("sshfs", "ffprobe", "ffmpeg")
    repeats = int(_env("REPEATS", 3))
    report = Report(
        "offline",
        "Offline playback: played music after a library scan; a blackhole mid-track",
        setup={"repeats": repeats},
    )
    report.notes.append(
        f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs: "
        "figures were taken on a shared, loaded machine"
    )
    with _workdir() as work:
        _scan_resistance(report, work, repeats)
        _blackhole(report, work, repeats)
    return report


if __name__ == "__main__":
    print(main().markdown())
