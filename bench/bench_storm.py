"""Gap 5.1 with the shipped timeouts: how long reads of *cached* tracks wait while 100
reads of uncached tracks hang on the origin, with the kernel's default limit of 12
background requests (``fuse.max_background = 0``, the behaviour before fusectl tuning) and
with the daemon's raised limit -- both measured in the same run, on the same library and
chunk cache.

Each variant starts a daemon whose every origin read hangs (the ``origin.local.read``
failpoint), releases 100 concurrent uncached reads, and meanwhile plays the cached album
over and over (its page cache dropped before every pass, so each read reaches the daemon)
until the last uncached read has answered. Every read(2) of the player is timed.

Knobs (environment): ``MUSICFS_BENCH_STORM_READS`` (100).

Run: ``python -m bench storm`` (saved under bench/results/) or
``python -m bench.bench_storm``.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench import Report, environment
from tests.support.daemon import MountedDaemon, forget_page_cache
from tests.support.library import make_library
from tests.support.storm import CHUNK, Storm, ls_r, percentile, play, storm_targets

log = logging.getLogger("bench.storm")
HANG = {"MUSICFS_FAILPOINTS": "origin.local.read=sleep(60000)"}
VARIANTS = (
    ("kernel default (12)", "[fuse]\nmax_background = 0\n"),
    ("raised through fusectl", ""),
)


def _storm(
    mnt: Path, cached: list[Path], uncached: list[Path], reads: int
) -> dict[str, float | int]:
    storm = Storm(storm_targets([mnt / r for r in uncached], reads)).start()
    time.sleep(0.2)
    ls_storm = ls_r(mnt)
    latencies: list[float] = []
    passes = 0
    while storm.running() or passes == 0:
        for track in cached:
            forget_page_cache(mnt / track)
        latencies += play([mnt / r for r in cached]).latencies
        passes += 1
    if not storm.join(60):
        raise RuntimeError("uncached reads outlived their deadline")
    durations = storm.durations
    return {
        "cached_reads": len(latencies),
        "passes": passes,
        "cached_p50": percentile(latencies, 50),
        "cached_p99": percentile(latencies, 99),
        "cached_max": max(latencies),
        "uncached_p50": statistics.median(durations),
        "uncached_max": max(durations),
        "uncached_eio": len(storm.errors),
        "ls_storm": ls_storm,
    }


def main() -> Report:
    reads = int(os.environ.get("MUSICFS_BENCH_STORM_READS", 100))
    report = Report(
        "storm",
        f"Cached reads during {reads} reads hung on the origin (default timeouts)",
        setup={
            "library": "4 albums x 5 tracks x 3 MiB, album 1 cached",
            "uncached reads": f"{reads} x 128 KiB over 45 chunks, origin reads hang 60 s",
            "timeouts": "fuse.read_deadline 8 s, timeouts.operation 5 s (defaults)",
        },
        environment=environment(),
    )
    with tempfile.TemporaryDirectory(prefix="musicfs-bench-storm-") as tmp_name:
        tmp = Path(tmp_name)
        lib = tmp / "lib"
        make_library(lib, albums=4, tracks=5, pad_to=3 * CHUNK)
        state = tmp / "state"
        with MountedDaemon(tmp / "mnt", [lib], state) as d:
            d.wait_for_log("tree: generation")
            files = sorted(p for p in d.mountpoint.rglob("*") if p.is_file())
            album = sorted({p.parent for p in files})[0]
            cached = [p.relative_to(d.mountpoint) for p in files if p.parent == album]
            uncached = [p.relative_to(d.mountpoint) for p in files if p.parent != album]
            play([d.mountpoint / r for r in cached])
            time.sleep(1.0)  # write-behind
            for track in cached:
                forget_page_cache(d.mountpoint / track)
            healthy = play([d.mountpoint / r for r in cached])
            ls_healthy = ls_r(d.mountpoint)
        figures = {}
        for name, extra in VARIANTS:
            cfg = tmp / "musicfs.toml"
            cfg.write_text("[library]\nscan_interval = 0\n" + extra)
            with MountedDaemon(tmp / "mnt", [lib], state, config=cfg, env=HANG) as d:
                d.wait_for_log("tree: generation")
                figures[name] = _storm(d.mountpoint, cached, uncached, reads)
                figures[name]["max_background"] = d.status()["fuse"]["max_background"] or 12
            log.info("%s: %s", name, figures[name])
    before, after = (figures[name] for name, _ in VARIANTS)
    ms = 1000.0
    for key, label in (("cached_p50", "p50"), ("cached_p99", "p99"), ("cached_max", "max")):
        report.add(
            f"cached read during the storm, {label}",
            after[key] * ms,
            "ms",
            baseline=before[key] * ms,
            baseline_name="max_background 12",
            note=f"healthy origin: max {healthy.slowest * ms:.2f} ms" if label == "max" else "",
        )
    for key, label in (("uncached_p50", "p50"), ("uncached_max", "max")):
        report.add(
            f"uncached read -> EIO, {label}",
            after[key],
            "s",
            baseline=before[key],
            baseline_name="max_background 12",
        )
    report.add(
        "ls -lR during the storm",
        after["ls_storm"] * ms,
        "ms",
        baseline=before["ls_storm"] * ms,
        baseline_name="max_background 12",
        note=f"healthy origin: {ls_healthy * ms:.1f} ms",
    )
    report.notes.append(
        f"cached reads timed: {after['cached_reads']} ({after['passes']} album passes) with "
        f"max_background {after['max_background']}, {before['cached_reads']} "
        f"({before['passes']} passes) with 12; every uncached read answered EIO "
        f"({after['uncached_eio']} and {before['uncached_eio']} of {reads})"
    )
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    print(main().markdown())
