"""Gap 5.1 on a real mount: a storm of concurrent reads of uncached tracks (which hang on
the origin) while a player reads cached tracks through the page cache. Shared by
``tests/process/test_hanging_origin.py`` and ``bench/bench_storm.py``."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 128 * 1024  # what a player asks for at a time
CHUNK = 1024 * 1024  # the cache's default chunk size


@dataclass
class Playback:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # one per read(2)
    digest: str = ""

    @property
    def slowest(self) -> float:
        return max(self.latencies, default=0.0)


def play(tracks: list[Path], block: int = BLOCK) -> Playback:
    """Read tracks start to end in ``block`` pieces through the page cache, timing every
    read(2)."""
    h = hashlib.sha256()
    out = Playback()
    started = time.monotonic()
    for track in tracks:
        fd = os.open(track, os.O_RDONLY)
        try:
            pos = 0
            while True:
                began = time.monotonic()
                data = os.pread(fd, block, pos)
                out.latencies.append(time.monotonic() - began)
                if not data:
                    break
                h.update(data)
                pos += len(data)
        finally:
            os.close(fd)
    out.seconds = time.monotonic() - started
    out.digest = h.hexdigest()
    return out


def ls_r(mnt: Path) -> float:
    started = time.monotonic()
    subprocess.run(["ls", "-lR", str(mnt)], check=True, capture_output=True, timeout=60)
    return time.monotonic() - started


def storm_targets(uncached: list[Path], count: int = 100) -> list[tuple[Path, int]]:
    """``count`` reads spread over every track's first three chunks."""
    n = len(uncached)
    return [(uncached[i % n], (i // n) % 3 * CHUNK + 4096) for i in range(count)]


class Storm:
    """One thread per target, released together: open, one ``BLOCK`` read, close. Each
    result is (seconds, bytes read or the OSError)."""

    def __init__(self, targets: list[tuple[Path, int]]):
        self.results: list[tuple[float, int | OSError]] = []
        self._lock = threading.Lock()
        self._go = threading.Event()
        self._threads = [threading.Thread(target=self._one, args=t, daemon=True) for t in targets]

    def _one(self, path: Path, offset: int) -> None:
        self._go.wait()
        began = time.monotonic()
        outcome: int | OSError
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                outcome = len(os.pread(fd, BLOCK, offset))
            finally:
                os.close(fd)
        except OSError as exc:
            outcome = exc
        with self._lock:
            self.results.append((time.monotonic() - began, outcome))

    def start(self) -> Storm:
        for t in self._threads:
            t.start()
        self._go.set()
        return self

    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout: float) -> bool:
        """Wait for every read; False if some are still stuck after ``timeout``."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not self.running()

    @property
    def durations(self) -> list[float]:
        return [took for took, _ in self.results]

    @property
    def errors(self) -> list[OSError]:
        return [o for _, o in self.results if isinstance(o, OSError)]


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
