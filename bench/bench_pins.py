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


def _pin_seconds(mnt: Path, query: str) -> float:
    """Pin ``query`` through the daemon at ``mnt`` and time it until every chunk is stored."""
    from musicfs.config import default_runtime_dir
    from musicfs.service.control import ControlError, request, socket_path

    state = mnt.parent / "state"
    socket = socket_path(default_runtime_dir(state), mnt)
    deadline = time.monotonic() + 60
    while True:  # until the start-up sync has indexed the tracks
        started = time.perf_counter()
        try:
            pin = request(socket, "pin", kind="query", text=query)["pin"]
            break
        except ControlError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    while True:
        status = request(socket, "pins")["pins"]
        mine = next(p for p in status["pins"] if p["id"] == pin["id"])
        if mine["complete"]:
            return time.perf_counter() - started
        time.sleep(0.02)


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
        with NetNS() as ns:
            sshd = SSHServer(ns, work, user="root").start()
            origin = {
                "url": sshd.url(lib),
                "name": "nas",
                "key_file": sshd.client_key,
                "known_hosts": sshd.known_hosts,
            }
            sshfs_peer = Sshfs(sshd, lib, work)
            for run in range(repeats):
                log.info("run %d: MusicFS cold sequential read", run + 1)
                with MusicFS(f"cold{run}", origin, work).mount(fresh=True) as mounted:
                    cold.append(read_all(wait_for_tracks(mounted.path, files)).mb_s)
                log.info("run %d: musicfs pin", run + 1)
                with MusicFS(f"pin{run}", origin, work).mount(fresh=True) as mounted:
                    wait_for_tracks(mounted.path, files)
                    pinned.append(total / _pin_seconds(mounted.path, "album") / 1e6)
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
