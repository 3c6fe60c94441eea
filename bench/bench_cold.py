"""The cold path over SFTP, against sshfs on the same sshd in the same run: what a library
scanner, MusicFS's own first sync and a track start cost in bytes from the server (an
nftables counter in its namespace) and in time.

Album-length tracks: ``MUSICFS_BENCH_COLD_FLAC`` (6) hi-res FLAC of ~21 MB and
``MUSICFS_BENCH_COLD_MP3`` (6) MP3 of ~7 MB, each with a 1200x1200 JPEG cover embedded,
encoded once by ffmpeg into ``/tmp/musicfs-bench-cold-lib`` and reused.

Rows (medians of ``MUSICFS_BENCH_REPEAT`` = 2 runs; page cache dropped before each):

* first sync: bytes ``musicfs mount`` moved from a fresh state until every track was
  listed, against a bare ``mutagen.File`` loop over sshfs;
* ``ffprobe -show_format -show_streams`` of every track right after that sync, then again
  (a second scan), then with the chunk cache emptied (the catalog kept) -- bytes and time
  against sshfs;
* time to first byte (open + the first 128 KiB of each track) and cold sequential
  throughput (every track, in 1 MiB reads and in the 32 KiB reads players make), against
  sshfs;
* the cold scan over a 100 Mbit/s link (``tc ... tbf``; ``MUSICFS_BENCH_SHAPED``, ``0``
  skips it).

``MUSICFS_BENCH_COLD_ONLY=start`` measures only the track-start rows (time to first byte
and the two throughputs), for work on the SFTP transport; ``MUSICFS_BENCH_TRANSPORTS``
(say ``openssh,asyncssh``) measures those rows once per SFTP ``transport`` setting.

Run: ``python -m bench cold``. Needs root, sshd, nft, tc, sshfs, ffmpeg/ffprobe.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import Report, drop_page_cache
from bench.peers import MusicFS, Sshfs, require_tools, shaped, wait_for_tracks
from bench.workloads import read_all, scan

log = logging.getLogger("bench")

LIB_DIR = Path("/tmp/musicfs-bench-cold-lib")
MiB = 1024 * 1024


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def make_library(flac: int, mp3: int) -> list[Path]:
    """Album-length tracks with embedded covers, made once and reused."""
    from tests.support.albums import make_scanner_library

    stamp = LIB_DIR / f".made-v2-{flac}-{mp3}"
    if stamp.exists():
        return sorted(p for p in LIB_DIR.rglob("*") if p.suffix in (".flac", ".mp3"))
    shutil.rmtree(LIB_DIR, ignore_errors=True)
    log.info("encoding %d FLAC and %d MP3 tracks into %s", flac, mp3, LIB_DIR)
    made = make_scanner_library(LIB_DIR, flac, mp3, flac_seconds=75, mp3_seconds=300)
    stamp.touch()
    return made


def _mutagen_loop(files: list[Path]) -> float:
    code = "import sys, mutagen\nfor p in sys.argv[1:]:\n    mutagen.File(p)\n"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *map(str, files)], check=True, timeout=600)
    return time.perf_counter() - started


def _ttfb(files: list[Path]) -> float:
    """Median seconds for open + the first 128 KiB, per track."""
    times = []
    for path in files:
        started = time.perf_counter()
        with path.open("rb", buffering=0) as f:
            f.read(128 * 1024)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _throughput(files: list[Path]) -> float:
    """MB/s reading every track start to end (1 MiB reads)."""
    return read_all(files).mb_s


SMALL_READ = 32 * 1024  # what ffmpeg's file protocol (mpv, ffplay, many players) reads


def _small_throughput(files: list[Path]) -> float:
    """MB/s reading every track start to end in ``SMALL_READ`` reads, as a player does:
    the kernel's read-ahead, not the read size, then decides the requests the FUSE
    daemon is sent."""
    started, nbytes = time.perf_counter(), 0
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            while block := os.read(fd, SMALL_READ):
                nbytes += len(block)
        finally:
            os.close(fd)
    return nbytes / (time.perf_counter() - started) / 1e6


def _scans(ours: MusicFS, run: Run, our_files, add) -> None:  # type: ignore[no-untyped-def]
    """The first sync and the ffprobe scans (after it, again, and with the cache emptied)."""
    shutil.rmtree(ours.base / "state", ignore_errors=True)  # a first mount
    before = run.counter.bytes()
    with ours.mount(fresh=True) as m:
        files = our_files(m.path)
        add("musicfs first sync MiB", (run.counter.bytes() - before) / MiB)
        t, b = run.measure(scan, files)
        add("musicfs scan after sync s", t)
        add("musicfs scan after sync MiB", b)
        add("musicfs second scan MiB", run.measure(scan, files)[1])
    with ours.mount(fresh=True) as m:  # the cache emptied, the catalog kept
        files = our_files(m.path)
        t, b = run.measure(scan, files)
        add("musicfs scan s", t)
        add("musicfs scan MiB", b)


def _track_start(peer: MusicFS, label: str, run: Run, our_files, add) -> None:  # type: ignore[no-untyped-def]
    """Time to first byte and the two cold throughputs, each on a freshly emptied cache."""
    for metric, fn, scale in (
        ("ttfb ms", _ttfb, 1000.0),
        ("MB/s", _throughput, 1.0),
        ("small MB/s", _small_throughput, 1.0),
    ):
        with peer.mount(fresh=True) as m:
            files = our_files(m.path)
            add(f"{label} {metric}", run.measure(fn, files)[0] * scale)


class Run:
    """One measurement against the server's byte counter."""

    def __init__(self, counter):  # type: ignore[no-untyped-def]
        self.counter = counter

    def measure(self, fn, files: list[Path]) -> tuple[float, float]:  # type: ignore[no-untyped-def]
        """(``fn(files)``, MiB the server sent meanwhile), page cache dropped first."""
        drop_page_cache()
        before = self.counter.bytes()
        result = fn(files)
        return result, (self.counter.bytes() - before) / MiB


def main() -> Report:
    from tests.support.netns import ByteCounter, NetNS, SSHServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    require_tools("sshfs", "nft", "tc", "ffprobe", "ffmpeg", "/usr/sbin/sshd")
    repeat = int(_env("MUSICFS_BENCH_REPEAT", "2"))
    rate = _env("MUSICFS_BENCH_SHAPED", "100mbit")
    lib_files = make_library(
        int(_env("MUSICFS_BENCH_COLD_FLAC", "6")), int(_env("MUSICFS_BENCH_COLD_MP3", "6"))
    )
    rels = [p.relative_to(LIB_DIR) for p in lib_files]
    total = sum(p.stat().st_size for p in lib_files)
    report = Report(
        "cold",
        "The cold path over SFTP: scanner, first sync and track start against sshfs",
        setup={"tracks": len(lib_files), "bytes": total, "repeat": repeat, "shaped": rate},
    )
    only_start = _env("MUSICFS_BENCH_COLD_ONLY", "") == "start"
    transports = [t for t in _env("MUSICFS_BENCH_TRANSPORTS", "").split(",") if t]
    if transports:
        report.setup["transports"] = transports
    work = Path(tempfile.mkdtemp(prefix="musicfs-bench-cold-"))
    os.chmod(work, 0o755)
    samples: dict[str, list[float]] = {}

    def add(metric: str, value: float) -> None:
        samples.setdefault(metric, []).append(value)

    try:
        with NetNS() as ns:
            sshd = SSHServer(ns, work, user="root").start()
            run = Run(ByteCounter(ns))
            origin = sshd.origin(LIB_DIR)
            ours = MusicFS("musicfs", origin, work)
            theirs = Sshfs(sshd, LIB_DIR, work)

            def our_files(mnt: Path) -> list[Path]:
                return wait_for_tracks(mnt, len(lib_files))

            # Each SFTP transport under test as its own peer; the first keeps the plain
            # "musicfs" rows so reports compare across runs.
            variants = [(ours, "musicfs")] + [
                (MusicFS(f"musicfs-{t}", {**origin, "transport": t}, work), f"musicfs[{t}]")
                for t in transports[1:]
            ]
            if transports:
                ours.config.write_text(ours.config.read_text() + f'transport = "{transports[0]}"\n')
            for peer, _ in variants if only_start else variants[1:]:
                with peer.mount(fresh=True) as m:  # its first sync, before anything is timed
                    our_files(m.path)
            for r in range(repeat):
                log.info("run %d/%d", r + 1, repeat)
                with theirs.mount(fresh=True) as m:
                    files = [m.path / rel for rel in rels]
                    if not only_start:
                        add("sshfs mutagen", run.measure(_mutagen_loop, files)[1])
                        t, b = run.measure(scan, files)
                        add("sshfs scan s", t)
                        add("sshfs scan MiB", b)
                    add("sshfs ttfb ms", run.measure(_ttfb, files)[0] * 1000)
                    add("sshfs MB/s", run.measure(_throughput, files)[0])
                    add("sshfs small MB/s", run.measure(_small_throughput, files)[0])
                if not only_start:
                    _scans(ours, run, our_files, add)
                for peer, label in variants:
                    _track_start(peer, label, run, our_files, add)
            if rate != "0" and not only_start:
                with shaped(ns, rate):
                    for r in range(repeat):
                        log.info("shaped run %d/%d", r + 1, repeat)
                        with theirs.mount(fresh=True) as m:
                            files = [m.path / rel for rel in rels]
                            t, b = run.measure(scan, files)
                            add("shaped sshfs scan s", t)
                            add("shaped sshfs scan MiB", b)
                        with ours.mount(fresh=True) as m:
                            files = our_files(m.path)
                            t, b = run.measure(scan, files)
                            add("shaped musicfs scan s", t)
                            add("shaped musicfs scan MiB", b)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def row(metric: str, ours_key: str, theirs_key: str | None, unit: str) -> None:
        report.add_runs(
            metric,
            samples[ours_key],
            unit,
            baseline_samples=samples[theirs_key] if theirs_key else None,
        )

    if not only_start:
        row(
            "first sync: bytes from the server (baseline: mutagen loop over sshfs)",
            "musicfs first sync MiB",
            "sshfs mutagen",
            "MiB",
        )
        row(
            "ffprobe scan right after the sync: bytes",
            "musicfs scan after sync MiB",
            "sshfs scan MiB",
            "MiB",
        )
        row(
            "ffprobe scan right after the sync: time",
            "musicfs scan after sync s",
            "sshfs scan s",
            "s",
        )
        row("second ffprobe scan: bytes", "musicfs second scan MiB", None, "MiB")
        row("ffprobe scan, empty cache: bytes", "musicfs scan MiB", "sshfs scan MiB", "MiB")
        row("ffprobe scan, empty cache: time", "musicfs scan s", "sshfs scan s", "s")
    for i, transport in enumerate(transports or [""]):
        label = "musicfs" if i == 0 else f"musicfs[{transport}]"
        named = f" ({transport} transport)" if transport else ""
        row(
            f"time to first byte (open + 128 KiB), cold{named}",
            f"{label} ttfb ms",
            "sshfs ttfb ms",
            "ms",
        )
        row(f"cold sequential read (1 MiB reads){named}", f"{label} MB/s", "sshfs MB/s", "MB/s")
        row(
            f"cold sequential read (32 KiB reads, as players read){named}",
            f"{label} small MB/s",
            "sshfs small MB/s",
            "MB/s",
        )
    if rate != "0" and not only_start:
        row(
            f"ffprobe scan, empty cache, {rate}: bytes",
            "shaped musicfs scan MiB",
            "shaped sshfs scan MiB",
            "MiB",
        )
        row(
            f"ffprobe scan, empty cache, {rate}: time",
            "shaped musicfs scan s",
            "shaped sshfs scan s",
            "s",
        )
    report.notes += [
        f"{len(lib_files)} tracks, {total / 1e6:.0f} MB, each with a 1200x1200 cover; the "
        "baseline is sshfs (or a bare mutagen loop over sshfs) on the same sshd, same run.",
        "Bytes: what the server's namespace sent (nftables counter), SSH framing included.",
    ]
    return report
