"""The SFTP origin by itself -- no mount, no cache -- with each ``transport``: ``openssh``
(an ssh process per connection, asyncssh's SFTP client over its pipes) against
``asyncssh`` (SSH in the process) as the baseline, on the same sshd in one run.

It tells the transport's share of the cold path apart from the mount's: ``python -m bench
cold`` measures the whole read path against sshfs, this only ``SFTPOrigin.read`` called
from trio as the cache calls it. The tracks are ``bench_cold``'s library.

Rows (medians over ``MUSICFS_BENCH_REPEAT`` = 4 rounds, the transports alternating which
goes first; page cache dropped before each cold measurement):

* cold first read: open + the first 128 KiB of each track;
* cold reads of every track in 1 MiB reads, two in flight (as read-ahead keeps them);
* the reading process's CPU per GB during those reads (what SSH costs the daemon);
* a warm 4 KiB read: one request's round trip, bridge and pool included.

Run: ``python -m bench sftp_origin``. Needs root, sshd, ffmpeg (for the library once).
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import trio

from bench import Report, drop_page_cache
from bench.bench_cold import LIB_DIR, make_library

log = logging.getLogger("bench")
MiB = 1024 * 1024
TRANSPORTS = ("openssh", "asyncssh")  # the first is measured, the second its baseline


async def _round(origin_for, transport: str, rels: list[str], sizes: list[int], add) -> None:  # type: ignore[no-untyped-def]
    origin = origin_for(transport)
    try:
        await origin.check()
        await origin.read(rels[0], 0, 4096)  # the second connection too, before timing
        await trio.sleep(0.5)
        drop_page_cache()
        firsts = []
        for rel in rels:
            started = time.perf_counter()
            await origin.read(rel, 0, 128 * 1024)
            firsts.append((time.perf_counter() - started) * 1000)
        add(transport, "first ms", statistics.median(firsts))
        drop_page_cache()
        cpu, started, nbytes = time.process_time(), time.perf_counter(), 0
        for rel, size in zip(rels, sizes, strict=True):
            for offset in range(0, size, 2 * MiB):
                async with trio.open_nursery() as nursery:
                    for part in (offset, offset + MiB):

                        async def one(at: int = part, path: str = rel) -> None:
                            nonlocal nbytes
                            nbytes += len(await origin.read(path, at, MiB))

                        nursery.start_soon(one)
        add(transport, "MB/s", nbytes / (time.perf_counter() - started) / 1e6)
        add(transport, "cpu s/GB", (time.process_time() - cpu) / (nbytes / 1e9))
        trips = []
        for i in range(200):
            started = time.perf_counter()
            await origin.read(rels[0], i * 4096, 4096)
            trips.append((time.perf_counter() - started) * 1000)
        add(transport, "rtt ms", statistics.median(trips))
    finally:
        await origin.aclose()


def main() -> Report:
    from musicfs.origins.settings import OriginSettings, OriginTimeouts
    from musicfs.origins.sftp import SFTPOrigin
    from musicfs.origins.urls import parse_sftp
    from tests.support.netns import NetNS, SSHServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    repeat = int(os.environ.get("MUSICFS_BENCH_REPEAT", "4"))
    files = make_library(
        int(os.environ.get("MUSICFS_BENCH_COLD_FLAC", "6")),
        int(os.environ.get("MUSICFS_BENCH_COLD_MP3", "6")),
    )
    rels = [str(p.relative_to(LIB_DIR)) for p in files]
    sizes = [p.stat().st_size for p in files]
    report = Report(
        "sftp_origin",
        "The SFTP origin alone, openssh transport against asyncssh's (same sshd, same run)",
        setup={"tracks": len(files), "bytes": sum(sizes), "repeat": repeat},
    )
    samples: dict[tuple[str, str], list[float]] = {}

    def add(transport: str, metric: str, value: float) -> None:
        samples.setdefault((transport, metric), []).append(value)

    work = Path(tempfile.mkdtemp(prefix="musicfs-bench-sftp-"))
    os.chmod(work, 0o755)
    with NetNS() as ns:
        sshd = SSHServer(ns, work, user="root").start()
        table = sshd.origin(LIB_DIR)

        def origin_for(transport: str) -> SFTPOrigin:
            url = str(table["url"])
            settings = OriginSettings(
                url=url,
                name="nas",
                key_file=Path(str(table["key_file"])),
                known_hosts=Path(str(table["known_hosts"])),
                transport=transport,
            )
            return SFTPOrigin("nas", parse_sftp(url), settings, OriginTimeouts())

        async def rounds() -> None:
            for r in range(repeat):
                log.info("round %d/%d", r + 1, repeat)
                order = TRANSPORTS if r % 2 == 0 else TRANSPORTS[::-1]
                for transport in order:
                    await _round(origin_for, transport, rels, sizes, add)

        trio.run(rounds)
    ours, theirs = TRANSPORTS
    for metric, key, unit in (
        ("cold first read (open + 128 KiB), origin only", "first ms", "ms"),
        ("cold reads of every track, 1 MiB, two in flight", "MB/s", "MB/s"),
        ("reading process CPU per GB read", "cpu s/GB", "s/GB"),
        ("warm 4 KiB read: one request's round trip", "rtt ms", "ms"),
    ):
        report.add_runs(
            metric,
            samples[(ours, key)],
            unit,
            baseline_samples=samples[(theirs, key)],
            baseline_name="asyncssh transport",
            higher_is_better=unit == "MB/s",
        )
    report.notes += [
        f"{len(files)} tracks, {sum(sizes) / 1e6:.0f} MB (bench_cold's library); MusicFS's "
        "column is the openssh transport, the baseline the asyncssh one, alternating.",
        "CPU: this process's user + system time (the ssh processes' own is not in it).",
    ]
    return report
