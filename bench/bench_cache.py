"""The chunk cache (issue 3, "Measure"), against baselines measured in the same run:

* cache-hit sequential read through a *fresh* mount (new daemon, so the kernel's page
  cache for the mount is empty and every byte goes through the daemon: chunk file read,
  BLAKE2b verification, FUSE) vs a native read of the same files from the origin folder;
* the same read once more on the same mount: served from the kernel page cache;
* the same cache-hit read with the reader's in-memory chunk cache off (``cache.memory =
  0``): every 128 KiB FUSE read then re-reads and re-hashes its whole 1 MiB chunk;
* time to first byte (open + 4 KiB read) on a cache miss vs a hit vs native;
* the share of a cache-hit read spent verifying hashes (the daemon's own counters) and
  this machine's BLAKE2b throughput.

Both sides read warm from the host page cache (the chunk files and the origin files were
just written or read): the comparison is the daemon's overhead, not the disk's. Dropping
the page cache would stall everyone else on a shared machine.

Knobs (environment): ``MUSICFS_BENCH_CACHE_FILES`` (8), ``MUSICFS_BENCH_CACHE_FILE_MB``
(24), ``MUSICFS_BENCH_CACHE_TTFB_FILES`` (8 small files for the first-byte timings).

Run: ``python -m bench cache`` (saved under bench/results/) or ``python -m bench.bench_cache``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import Report, environment, stopwatch
from musicfs.cache.index import HASH_LEN
from tests.support.daemon import MountedDaemon, musicfs_cmd
from tests.support.library import make_library

log = logging.getLogger("bench.cache")
PIECE = 128 * 1024  # what FUSE asks for at a time


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def read_file(path: Path) -> int:
    """Sequential 128 KiB reads, like a player or ``cat``; returns bytes read."""
    total = 0
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(PIECE):
            total += len(chunk)
    return total


def read_all(paths: list[Path]) -> tuple[float, int]:
    with stopwatch() as t:
        total = sum(read_file(p) for p in paths)
    return t[0], total


def first_byte(path: Path) -> float:
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, 4096)
    finally:
        os.close(fd)
    return time.perf_counter() - started


def files_of(root: Path) -> list[Path]:
    return sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def mount_files(mnt: Path, count: int, timeout: float = 60) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = files_of(mnt)
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise RuntimeError(f"{mnt}: {count} files did not appear within {timeout}s")


def cache_status(d: MountedDaemon, state: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [*musicfs_cmd("status", "--json", "--state-dir", str(state)), str(d.mountpoint)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    status: dict[str, Any] = json.loads(proc.stdout)["cache"]
    return status


def wait_until_stored(d: MountedDaemon, state: Path, chunks: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cache_status(d, state)["chunks"] >= chunks:
            return
        time.sleep(0.2)
    raise RuntimeError(f"write-behind did not store {chunks} chunks within {timeout}s")


class Setup:
    def __init__(self, work: Path, files: int, file_mb: int, ttfb_files: int):
        self.work = work
        self.lib = work / "lib"
        self.ttfb_lib = work / "ttfb-lib"
        make_library(self.lib, albums=1, tracks=files, pad_to=file_mb * 2**20)
        make_library(self.ttfb_lib, albums=1, tracks=ttfb_files, pad_to=3 * 2**20)
        self.files = files_of(self.lib)
        self.bytes = sum(p.stat().st_size for p in self.files)
        self.chunks = sum(-(-p.stat().st_size // 2**20) for p in self.files)
        self.config = work / "musicfs.toml"
        self.n = 0

    @contextmanager
    def mount(self, name: str, lib: Path, *, memory: str | None = None) -> Iterator[MountedDaemon]:
        """A daemon on ``lib`` with the cache of ``name`` (kept between mounts)."""
        self.n += 1
        config = self.work / f"{name}-{self.n}.toml"
        text = '[library]\nscan_interval = 0\n[cache]\nmax_size = "4G"\nmin_free = "0"\n'
        if memory is not None:
            text += f'memory = "{memory}"\n'
        config.write_text(text)
        state = self.work / f"state-{name}"
        if not (state / "catalog.sqlite").exists():
            subprocess.run(
                musicfs_cmd("scan", "--origin", str(lib), "--state-dir", str(state)),
                check=True,
                capture_output=True,
                timeout=300,
            )
        d = MountedDaemon(
            self.work / f"mnt-{name}-{self.n}",
            [lib],
            state,
            cache_dir=self.work / f"cache-{name}",
            config=config,
        )
        with d:
            yield d


def blake2b_mb_s() -> float:
    data = os.urandom(2**20)
    rounds = 200
    with stopwatch() as t:
        for _ in range(rounds):
            hashlib.blake2b(data, digest_size=HASH_LEN).digest()
    return rounds / t[0]


def main() -> Report:
    files = _env_int("MUSICFS_BENCH_CACHE_FILES", 8)
    file_mb = _env_int("MUSICFS_BENCH_CACHE_FILE_MB", 24)
    ttfb_files = _env_int("MUSICFS_BENCH_CACHE_TTFB_FILES", 8)
    report = Report("cache", "Chunk cache: hits through a fresh mount vs native reads")
    work = Path(tempfile.mkdtemp(prefix="musicfs-bench-cache-"))
    try:
        setup = Setup(work, files, file_mb, ttfb_files)
        mib = setup.bytes / 2**20
        report.setup = {
            "files": files,
            "file_mb": file_mb,
            "total_mib": round(mib, 1),
            "chunk_size": "1M",
            "read_size": PIECE,
            "page_cache": "warm on both sides (not dropped)",
        }
        log.info("library: %d files, %.0f MiB", files, mib)
        _throughput(report, setup, mib)
        _first_byte(report, setup)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    report.notes.append(
        f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} on {os.cpu_count()} CPUs "
        "at the end of the run; figures on a busy machine are noisy"
    )
    return report


def _throughput(report: Report, setup: Setup, mib: float) -> None:
    read_all(setup.files)  # warm the origin files
    native_s = min(read_all(setup.files)[0] for _ in range(2))
    native = mib / native_s

    with setup.mount("main", setup.lib) as d:  # first pass: misses fill the cache
        fill_s, _ = read_all(mount_files(d.mountpoint, len(setup.files)))
        wait_until_stored(d, setup.work / "state-main", setup.chunks)
    report.add(
        "miss: sequential read, origin -> cache",
        mib / fill_s,
        "MiB/s",
        baseline=native,
        baseline_name="native read",
        higher_is_better=True,
        note="includes write-behind of every chunk",
    )

    state = setup.work / "state-main"
    with setup.mount("main", setup.lib) as d:  # fresh mount: every byte through the daemon
        paths = mount_files(d.mountpoint, len(setup.files))
        before = cache_status(d, state)
        hit_s, _ = read_all(paths)
        after = cache_status(d, state)
        again_s, _ = read_all(paths)
    hits = after["counters"]["hits"] - before["counters"]["hits"]
    verify_s = after["counters"]["verify_seconds"] - before["counters"]["verify_seconds"]
    disk_s = after["counters"]["read_seconds"] - before["counters"]["read_seconds"]
    fetched = after["reader"]["origin_fetches"] - before["reader"]["origin_fetches"]
    report.add(
        "hit: sequential read, fresh mount",
        mib / hit_s,
        "MiB/s",
        baseline=native,
        baseline_name="native read",
        higher_is_better=True,
        note=f"{hits} chunk reads from disk for {setup.chunks} chunks, {fetched} origin fetches",
    )
    report.add(
        "repeat read, kernel page cache",
        mib / again_s,
        "MiB/s",
        baseline=native,
        baseline_name="native read",
        higher_is_better=True,
    )
    report.add(
        "hash verification share of the hit read",
        100 * verify_s / hit_s,
        "%",
        note=f"{verify_s:.3f}s hashing + {disk_s:.3f}s chunk-file reads in worker threads "
        f"(read-ahead overlaps them) over {hit_s:.3f}s of reading",
    )
    report.add("BLAKE2b-256 throughput (1 MiB chunks)", blake2b_mb_s(), "MiB/s")

    with setup.mount("main", setup.lib, memory="0") as d:
        paths = mount_files(d.mountpoint, len(setup.files))
        before = cache_status(d, state)
        nomem_s, _ = read_all(paths)
        after = cache_status(d, state)
    report.add(
        "hit read without the in-memory chunk cache",
        mib / nomem_s,
        "MiB/s",
        baseline=mib / hit_s,
        baseline_name="with it (16 MiB)",
        higher_is_better=True,
        note=f"{after['counters']['hits'] - before['counters']['hits']} chunk reads+hashes "
        f"instead of {hits}",
    )


def _first_byte(report: Report, setup: Setup) -> None:
    paths = files_of(setup.ttfb_lib)
    for p in paths:
        read_file(p)
    native = statistics.median(first_byte(p) for p in paths)
    state = setup.work / "state-ttfb"
    with setup.mount("ttfb", setup.ttfb_lib) as d:
        mounted = mount_files(d.mountpoint, len(paths))
        miss = statistics.median(first_byte(p) for p in mounted)
        wait_until_stored(d, state, len(paths))
    with setup.mount("ttfb", setup.ttfb_lib) as d:  # fresh mount: hits come from disk
        mounted = mount_files(d.mountpoint, len(paths))
        hit = statistics.median(first_byte(p) for p in mounted)
    report.add(
        "time to first byte, miss",
        miss * 1000,
        "ms",
        baseline=native * 1000,
        baseline_name="native",
        note="local origin: fetch one 1 MiB chunk",
    )
    report.add(
        "time to first byte, hit",
        hit * 1000,
        "ms",
        baseline=native * 1000,
        baseline_name="native",
        note="read + verify one 1 MiB chunk",
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    result = main()
    result.environment = {**environment(), **result.environment}
    saved = result.save()
    print(result.markdown())
    print(f"\nsaved {saved}", file=sys.stderr)
