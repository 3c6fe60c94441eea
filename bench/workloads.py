"""What users do to a music folder, timed the same way on every peer: list it, read it
start to end, open a track and wait for its first bytes, read many tracks at once, scan
it with ffprobe, and read while the server is gone."""

from __future__ import annotations

import multiprocessing
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

FIRST = 128 * 1024  # what a player asks for first
BLOCK = 1024 * 1024


def ls(mnt: Path, long: bool) -> float:
    """Seconds for ``ls -R`` (or ``ls -lR``: a stat of every entry) of the mount."""
    started = time.perf_counter()
    subprocess.run(
        ["ls", "-lR" if long else "-R", str(mnt)],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=600,
    )
    return time.perf_counter() - started


@dataclass
class Reads:
    ttfb: list[float]  # seconds from open() to the first 128 KiB, per file
    seconds: float
    nbytes: int

    @property
    def mb_s(self) -> float:
        return self.nbytes / self.seconds / 1e6


def read_file(path: Path) -> tuple[float, int]:
    """Open, read the first 128 KiB (timed: time to first byte), then the rest in 1 MiB
    reads, as a player streaming a track does. Returns (ttfb, bytes)."""
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, FIRST, 0)
        ttfb = time.perf_counter() - started
        pos = len(data)
        while data:
            data = os.pread(fd, BLOCK, pos)
            pos += len(data)
    finally:
        os.close(fd)
    return ttfb, pos


def read_all(paths: list[Path]) -> Reads:
    """Every file in turn, start to end."""
    ttfb, nbytes = [], 0
    started = time.perf_counter()
    for path in paths:
        first, size = read_file(path)
        ttfb.append(first)
        nbytes += size
    return Reads(ttfb, time.perf_counter() - started, nbytes)


def read_parallel(paths: list[Path], readers: int = 16) -> Reads:
    """``readers`` threads, each streaming its own files: aggregate throughput."""
    started = time.perf_counter()
    with ThreadPoolExecutor(readers) as pool:
        results = list(pool.map(read_file, paths))
    return Reads([r[0] for r in results], time.perf_counter() - started, sum(r[1] for r in results))


def scan(paths: list[Path]) -> float:
    """A library scanner: ``ffprobe`` of every track (format and stream headers), one after
    another. Seconds."""
    started = time.perf_counter()
    for path in paths:
        subprocess.run(
            ["ffprobe", "-v", "error", "-show_format", "-show_streams", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )
    return time.perf_counter() - started


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def read_block(path: Path, offset: int) -> bool:
    """One 128 KiB read at ``offset``; True if it returned data."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            return bool(os.pread(fd, FIRST, offset))
        finally:
            os.close(fd)
    except OSError:
        return False


@dataclass
class Fault:
    latencies: list[float]  # every read started during the fault, however it ended
    recovered_s: float | None  # from the fault's end to the first good uncached read


def during_fault(
    paths: list[Path],
    start: Callable[[], None],
    end: Callable[[], None],
    seconds: float,
    recover_cap: float,
    threads: int = 4,
) -> Fault:
    """Player-like reads of uncached 128 KiB blocks from ``threads`` threads while a fault
    lasts ``seconds``; then how long until an uncached read works again. A read blocked by
    the fault is timed until it returns, or until ``recover_cap`` after the fault ended.

    The readers run in a child process: a process that forks while it holds files open
    on a hung FUSE mount hangs in the fork (closing them in the child sends the file
    system a FLUSH it never answers), and ``start``/``end`` run commands."""
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(
        target=_fault_readers, args=(theirs, paths, seconds, recover_cap, threads), daemon=True
    )
    child.start()
    try:
        start()
        ours.send("go")
        time.sleep(seconds)
        end()
        ours.send("ended")
        if not ours.poll(recover_cap + 30):
            raise RuntimeError("fault readers did not report")
        latencies, recovered = ours.recv()
        return Fault(latencies, recovered)
    finally:
        child.kill()  # readers still blocked in the file system go with it
        child.join(10)


def _fault_readers(
    pipe: Connection, paths: list[Path], seconds: float, recover_cap: float, threads: int
) -> None:
    offsets = [(p, off) for p in paths for off in range(FIRST, p.stat().st_size - FIRST, 4 * FIRST)]
    random.Random(1).shuffle(offsets)
    todo = iter(offsets)
    lock = threading.Lock()
    latencies: list[float] = []
    # Blocks that did not come back during the fault: never served, so never cached -- the
    # recovery probe may reuse them. (A mount that fails fast can run out of unread blocks
    # during the fault; reading a block served before would time a cache hit, not recovery.)
    failed: list[tuple[Path, int]] = []
    in_flight: dict[int, float] = {}  # thread id -> when its current read began
    pipe.recv()  # "go": the fault is on
    stop = time.monotonic() + seconds

    def worker() -> None:
        me = threading.get_ident()
        while time.monotonic() < stop:
            with lock:
                target = next(todo, None)
                if target is None:
                    return
                began = in_flight[me] = time.perf_counter()
            ok = read_block(*target)
            with lock:
                del in_flight[me]
                latencies.append(time.perf_counter() - began)
                if not ok:
                    failed.append(target)
            time.sleep(0.02)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    pipe.recv()  # "ended": the fault is over
    ended = time.monotonic()
    recovered = None
    while time.monotonic() - ended < recover_cap:
        with lock:
            target = next(todo, None) or (failed.pop(0) if failed else None)
        if target is None:
            break
        if read_block(*target):
            recovered = time.monotonic() - ended
            break
        time.sleep(0.05)
    for t in pool:
        t.join(max(0.0, recover_cap - (time.monotonic() - ended)))
    with lock:  # reads still blocked at the cap count with the time they have waited
        now = time.perf_counter()
        pipe.send((latencies + [now - began for began in in_flight.values()], recovered))
