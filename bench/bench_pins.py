"""Pins (issue 10, "Measure"): how fast ``musicfs pin`` fills the cache over SFTP, against a
cold sequential read of the same files through a MusicFS mount, and ``sshfs`` reading
them, all in the same run on the same sshd.

Each measurement uses a fresh MusicFS (empty catalog and cache) over an OpenSSH sshd in a
network namespace (``tests/support/netns.py``); its start-up sync has read the tags, as a
user's mount would have, before the clock starts. The pin is timed inside the daemon's
own fetcher: from the control-socket ``pin`` request to every chunk seen in the store
(``complete``). The server's page cache is warmed first, so the figures compare how the
bytes are fetched, not the disk.

Knobs: ``MUSICFS_BENCH_PINS_FILES`` (8), ``MUSICFS_BENCH_PINS_MB`` (16 per file),
``MUSICFS_BENCH_PINS_REPEATS`` (3).

Run: ``python -m bench pins`` (or ``make bench BENCH_ARGS=pins``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench import Report
from bench.peers import MusicFS, Sshfs, make_album, wait_for_tracks
from bench.workloads import read_all

log = logging.getLogger("bench.pins")


def _env(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _start_pin(mnt: Path, query: str) -> tuple[Path, int, float]:
    """Pin ``query`` through the daemon at ``mnt``: (its socket, the pin's id, when)."""
    from musicfs.config import default_runtime_dir
    from musicfs.service.control import ControlError, request, socket_path

    state = mnt.parent / "state"
    socket = socket_path(default_runtime_dir(state), mnt)
    deadline = time.monotonic() + 60
    while True:  # until the start-up sync has indexed the tracks
        started = time.perf_counter()
        try:
            pin = request(socket, "pin", kind="query", text=query)["pin"]
            return socket, int(pin["id"]), started
        except ControlError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _pin_done(socket: Path, pin_id: int, started: float) -> float:
    """Seconds from ``started`` until every chunk of the pin is stored."""
    from musicfs.service.control import request

    while True:
        status = request(socket, "pins")["pins"]
        mine = next(p for p in status["pins"] if p["id"] == pin_id)
        if mine["complete"]:
            return time.perf_counter() - started
        time.sleep(0.02)


def _player_read_ms(path: Path) -> float:
    """A player's seek into the middle of an uncached track: 128 KiB there, timed."""
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 128 * 1024, os.fstat(fd).st_size // 2)
    finally:
        os.close(fd)
    return (time.perf_counter() - started) * 1000


def main() -> Report:
    from tests.support.netns import NetNS, SSHServer

    files = _env("MUSICFS_BENCH_PINS_FILES", 8)
    size = _env("MUSICFS_BENCH_PINS_MB", 16) * 1024 * 1024
    repeats = _env("MUSICFS_BENCH_PINS_REPEATS", 3)
    if shutil.which("sshfs") is None:
        raise SystemExit("sshfs is missing: run scripts/setup-debian.sh bench")
    report = Report(
        "pins",
        "Pins: filling the cache with `musicfs pin` vs a cold sequential read (SFTP)",
        setup={"files": files, "file_mb": size / 2**20, "repeats": repeats},
    )
    report.notes.append(
        f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs: "
        "figures were taken on a shared, loaded machine"
    )
    work = Path(tempfile.mkdtemp(prefix="musicfs-bench-pins-"))
    os.chmod(work, 0o755)
    try:
        lib = work / "lib"
        made = make_album(lib, files, size)
        total = sum(p.stat().st_size for p in made)
        for p in made:
            p.read_bytes()  # the server's page cache is warm for every run alike
        pinned, cold, sshfs = [], [], []
        idle_ms, pinning_ms = [], []
        with NetNS() as ns:
            sshd = SSHServer(ns, work, user="root").start()
            origin = sshd.origin(lib)
            sshfs_peer = Sshfs(sshd, lib, work)
            for run in range(repeats):
                log.info("run %d: MusicFS cold sequential read", run + 1)
                with MusicFS(f"cold{run}", origin, work).mount(fresh=True) as mounted:
                    tracks = wait_for_tracks(mounted.path, files)
                    idle_ms.append(_player_read_ms(tracks[-1]))
                    cold.append(read_all(tracks).mb_s)
                log.info("run %d: musicfs pin", run + 1)
                with MusicFS(f"pin{run}", origin, work).mount(fresh=True) as mounted:
                    tracks = wait_for_tracks(mounted.path, files)
                    socket, pin_id, started = _start_pin(mounted.path, "album")
                    # The pin fetches in path order: the last track is still uncached.
                    pinning_ms.append(_player_read_ms(tracks[-1]))
                    pinned.append(total / _pin_done(socket, pin_id, started) / 1e6)
                log.info("run %d: sshfs cold sequential read", run + 1)
                with sshfs_peer.mount(fresh=True) as mounted:
                    sshfs.append(read_all([mounted.path / p.relative_to(lib) for p in made]).mb_s)
        report.add_runs(
            "pin throughput (whole library)",
            pinned,
            "MB/s",
            baseline_samples=cold,
            baseline_name="MusicFS cold sequential read",
            higher_is_better=True,
        )
        report.add_runs(
            "player seek into an uncached track while a pin fetches",
            pinning_ms,
            "ms",
            baseline_samples=idle_ms,
            baseline_name="the same read with the mount idle",
        )
        report.add_runs(
            "MusicFS cold sequential read",
            cold,
            "MB/s",
            baseline_samples=sshfs,
            baseline_name="sshfs",
            higher_is_better=True,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


if __name__ == "__main__":
    print(main().markdown())
