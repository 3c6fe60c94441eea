"""Scale (issue 9): 100,000 generated tracks, and a 1,000,000-track synthetic catalog.

100,000 real files (``bench_library``'s generator, cached between runs), local origin,
against the native folder and ``sshfs`` of the same folder over SFTP (sshd in a network
namespace on this machine) measured in the same run:

* fresh scan (``musicfs scan``) vs the bare single-process mutagen loop, and an
  unchanged-library rescan;
* ``musicfs mount`` until the mount answers, with the catalog already scanned; daemon RSS
  after the start-up sync and its peak;
* ``ls -R`` warm and cold (page cache dropped), ``find -type f`` warm;
* ``musicfs search dawn`` as a whole process beside the daemon;
* lookup + getattr of never-seen files through the kernel (``os.stat``), p50/p99;
* the daemon's peak RSS through a sync of a tenth of the library changed (mtimes moved on:
  tags read again, tree and search index updated), beside its publisher child's peak.

1,000,000 tracks: a synthetic catalog (rows written straight into SQLite, tags from the
same generator) with its tree published by the real publisher (a child process, as in the
daemon); then the mount of it (the origin an empty folder: a listing that would remove
every track removes nothing), and the served tree's lookup + getattr latency on the loop
thread while a sync that changed 10,000 tracks is written and published (the batches by
another thread, the tree by the publisher child, as in the daemon).

Knobs: ``MUSICFS_BENCH_SCALE_TRACKS`` (100000), ``MUSICFS_BENCH_SCALE_BIG`` (1000000, 0
skips), ``MUSICFS_BENCH_REPEAT`` (2), ``MUSICFS_BENCH_DIR``, ``MUSICFS_BENCH_DROP_CACHES``.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import Report, drop_page_cache, stopwatch
from bench.bench_library import (
    _WORDS,
    BARE_MUTAGEN_LOOP,
    Daemon,
    _musicfs,
    _run,
    library,
    plan,
)
from bench.peers import Sshfs
from bench.workloads import percentile

log = logging.getLogger("bench.scale")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _timed(cmd: list[str], cold: bool = False) -> float:
    if cold:
        drop_page_cache()
    with stopwatch() as took:
        _run(cmd)
    return took[0]


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


def _spread(samples: list[float]) -> str:
    return "/".join(f"{s:.2f}" for s in samples) + " s"


def _stat_latencies(paths: list[Path]) -> list[float]:
    """Seconds per ``os.stat`` of each path (never seen before: a lookup and attributes
    from the daemon)."""
    out = []
    for p in paths:
        started = time.perf_counter()
        os.stat(p)
        out.append(time.perf_counter() - started)
    return out


def _vm(pid: int, key: str) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) / 1024 if m else 0.0


def main() -> Report:
    tracks = _env_int("MUSICFS_BENCH_SCALE_TRACKS", 100_000)
    big = _env_int("MUSICFS_BENCH_SCALE_BIG", 1_000_000)
    repeat = _env_int("MUSICFS_BENCH_REPEAT", 2)
    report = Report("scale", f"Scale: {tracks:,} generated tracks; {big:,}-track synthetic catalog")
    report.notes.append(
        f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: the "
        "machine was shared with other work; every figure is from this one run"
    )
    work = Path(tempfile.mkdtemp(prefix="musicfs-bench-scale-"))
    os.chmod(work, 0o755)
    try:
        lib, _ = library(tracks, 0, 16)
        _hundred_k(report, lib, work, tracks, repeat)
        if big:
            _million(report, work, big)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.notes.append(f"load average at end {os.getloadavg()[0]:.1f}")
    return report


def _hundred_k(report: Report, lib: Path, work: Path, count: int, repeat: int) -> None:
    from tests.support.netns import NetNS, SSHServer

    state = work / "state"
    # -- scans -----------------------------------------------------------------------------
    bare = [sys.executable, "-c", BARE_MUTAGEN_LOOP, str(lib)]
    ours, base = [], []
    for k in range(repeat):
        base.append(_timed(bare, cold=False))
        fresh = work / f"scan{k}"
        ours.append(_timed(_musicfs("scan", "--origin", str(lib), "--state-dir", str(fresh))))
        if k:
            shutil.rmtree(fresh)
    log.info("fresh scan: musicfs %s, bare mutagen %s", _spread(ours), _spread(base))
    report.add(
        "fresh scan",
        count / _median(ours),
        "tracks/s",
        baseline=count / _median(base),
        baseline_name="bare single-process mutagen loop",
        higher_is_better=True,
        note=f"{_spread(ours)} vs {_spread(base)}; whole processes, warm page cache",
    )
    (work / "scan0").rename(state)
    rescans = [
        _timed(_musicfs("scan", "--origin", str(lib), "--state-dir", str(state)))
        for _ in range(repeat)
    ]
    report.add("unchanged-library rescan", _median(rescans), "s", note=_spread(rescans))

    # -- the mount -------------------------------------------------------------------------
    mnt = work / "mnt"
    # A first start publishes the tree once (the scan does not); the figures are of the
    # start after it, as every later start is.
    first = Daemon(lib, state, work / "cache", mnt, work / "daemon0.log")
    first_mount = first.wait_for("tree: generation")
    first.stop()
    daemon = Daemon(lib, state, work / "cache", mnt, work / "daemon.log")
    try:
        mount_s = daemon.wait_for("mount")
        rss_mounted = _vm(daemon.proc.pid, "VmRSS")
        ready_s = daemon.wait_for("search index:")
        report.add(
            "`musicfs mount` until the mount answers",
            mount_s,
            "s",
            note=f"scanned catalog, tree published before; start-up sync and search index "
            f"done at {ready_s:.1f} s (the very first start, which publishes the tree: "
            f"{first_mount:.1f} s to the published tree)",
        )
        rss_synced = _vm(daemon.proc.pid, "VmRSS")
        seen = int(_run(["sh", "-c", f"find '{mnt}' -type f | wc -l"]))
        assert seen == count, f"the mount shows {seen} files, the origin has {count}"
        sample = random.Random(9).sample(range(count), min(2000, count))

        with NetNS() as ns:
            sshd = SSHServer(ns, work, user="root").start()
            with Sshfs(sshd, lib, work).mount(fresh=True) as mounted:
                sshfs = mounted.path
                for metric, cmd, cold in (
                    ("`ls -R` warm", ["ls", "-R"], False),
                    ("`ls -R` cold (page cache dropped)", ["ls", "-R"], True),
                    ("`find -type f` warm", ["find", "-type", "f"], False),
                ):
                    runs: dict[str, list[float]] = {"musicfs": [], "native": [], "sshfs": []}
                    for where, root in (("musicfs", mnt), ("native", lib), ("sshfs", sshfs)):
                        _run([*cmd[:1], str(root), *cmd[1:]])  # warm: once before timing
                        for _ in range(repeat):
                            runs[where].append(_timed([*cmd[:1], str(root), *cmd[1:]], cold))
                    log.info("%s: %s", metric, {k: _spread(v) for k, v in runs.items()})
                    report.add(
                        metric,
                        _median(runs["musicfs"]),
                        "s",
                        baseline=_median(runs["native"]),
                        baseline_name="native folder",
                        note=f"sshfs {_median(runs['sshfs']):.2f} s; samples musicfs "
                        f"{_spread(runs['musicfs'])}, native {_spread(runs['native'])}, "
                        f"sshfs {_spread(runs['sshfs'])}",
                    )
                # Files never looked up since the mount: a lookup and getattr each.
                daemon.stop()
                files = _mounted_files(state, sample)
                daemon = Daemon(lib, state, work / "cache", mnt, work / "daemon2.log")
                daemon.wait_for("search index:")  # the start-up sync is over
                ours_lat = _stat_latencies([mnt / f for f in files])
                theirs_lat = _stat_latencies([sshfs / f for f in _native_files(lib, sample)])
        report.add(
            "lookup+getattr of unseen files (`stat`) p99",
            percentile(ours_lat, 99) * 1000,
            "ms",
            note=f"p50 {percentile(ours_lat, 50) * 1000:.3f} ms over {len(ours_lat)} files; "
            f"sshfs p50 {percentile(theirs_lat, 50) * 1000:.3f} / p99 "
            f"{percentile(theirs_lat, 99) * 1000:.3f} ms (its cache warm from the runs above)",
        )
        search_s, search_note = _time_search(state)
        report.add("`musicfs search dawn` (whole process)", search_s, "s", note=search_note)
        inside, inside_note = _daemon_search_latencies(state)
        report.add("search p99, answered by the daemon", inside, "ms", note=inside_note)
        report.add(
            "daemon RSS: mounted / after start-up sync / peak",
            _vm(daemon.proc.pid, "VmHWM"),
            "MiB",
            note=f"{rss_mounted:.0f} MiB when the mount answered, {rss_synced:.0f} MiB after "
            "the start-up sync and search index update; value: peak (VmHWM) of the last "
            "daemon (stat runs)",
        )
        # A sync that changed a tenth of the library: its tags read again, the tree and the
        # search index brought up to date, all while mounted (the start-up sync of the
        # daemon after the change: the same path as a background sync).
        daemon.stop()
        touched = _touch(lib, 10)
        daemon = Daemon(lib, state, work / "cache", mnt, work / "daemon3.log")
        daemon.wait_for("search index:")
        children = [int(m) for m in re.findall(r"its peak RSS (\d+) MiB", daemon.log())]
        report.add(
            f"daemon RSS peak through a sync of {touched:,} changed tracks",
            _vm(daemon.proc.pid, "VmHWM"),
            "MiB",
            note=f"{len(children)} publishes planned in a child process, each child's peak "
            f"{'/'.join(str(c) for c in children) or '-'} MiB (it exits after the publish)",
        )
    finally:
        daemon.stop()


def _touch(lib: Path, every: int) -> int:
    """Move the mtime of every ``every``-th track one second on: a sync reads it again."""
    touched = 0
    for folder, _, names in sorted(os.walk(lib)):
        for name in sorted(names):
            if name.endswith(".jpg"):
                continue
            touched += 1
            if touched % every == 0:
                path = os.path.join(folder, name)
                st = os.stat(path)
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    return touched // every


def _time_search(state: Path, repeat: int = 5) -> tuple[float, str]:
    """``musicfs search dawn`` as a user types it (the default limit: 100 hits), a whole
    process beside the daemon: the median seconds of ``repeat`` runs, and a note with the
    samples and the same search with ``--limit 10000``. A first, untimed run writes the
    package's bytecode, as installing it does (``PYTHONDONTWRITEBYTECODE`` would otherwise
    make every run compile the modules it imports)."""
    import subprocess

    command = _musicfs("search", "--state-dir", str(state), "dawn")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(command, env=env, capture_output=True, check=True, timeout=600)
    samples = []
    for _ in range(repeat):
        with stopwatch() as took:
            out = _run(command)
        samples.append(took[0])
    with stopwatch() as took:
        many = _run(_musicfs("search", "--state-dir", str(state), "--limit", "10000", "dawn"))
    return _median(samples), (
        f"{len(out.splitlines()):,} hits (the default limit), beside the daemon; samples "
        f"{_spread(samples)}; with --limit 10000: {took[0]:.2f} s for "
        f"{len(many.splitlines()):,} hits"
    )


def _daemon_search_latencies(state: Path, queries: int = 300) -> tuple[float, str]:
    """Queries of one and two of the generator's words (the default limit: 100 hits) sent
    to the daemon's control socket as ``musicfs search`` sends them: the p99 in ms of the
    whole round trip (JSON and socket included, so an upper bound of the time inside the
    daemon), and a note with the p50 and the count."""
    from musicfs.config import default_runtime_dir
    from musicfs.service.control import request

    catalog = os.path.abspath(state / "catalog.sqlite")
    sockets = [
        sock
        for sock in sorted(default_runtime_dir(state).glob("control-*.sock"))
        if request(sock, "search", 10.0, query="dawn", limit=1).get("catalog") == catalog
    ]
    if not sockets:
        raise RuntimeError(f"no daemon of {catalog} answers in {default_runtime_dir(state)}")
    rng = random.Random(7)
    samples = []
    for i in range(queries):
        words = [_WORDS[rng.randrange(len(_WORDS))] for _ in range(1 + i % 2)]
        with stopwatch() as took:
            reply = request(sockets[0], "search", 10.0, query=" ".join(words), limit=100)
        if "paths" not in reply:
            raise RuntimeError(f"the daemon's search answered {sorted(reply)}")
        samples.append(took[0])
    return percentile(samples, 99) * 1000, (
        f"p50 {percentile(samples, 50) * 1000:.2f} ms over {len(samples)} queries of one or "
        f"two words through the control socket (the round trip: an upper bound)"
    )


def _mounted_files(state: Path, sample: list[int]) -> list[str]:
    """Mounted paths of a sample of tracks, read from the published tree: walking the
    mount would give the kernel their attributes (readdirplus) and no lookup would be
    left to time."""
    from musicfs.catalog.db import Catalog
    from musicfs.catalog.served import ServedTree

    catalog = Catalog(state / "catalog.sqlite")
    try:
        names = [
            p.lstrip("/") for p, _ in ServedTree(catalog, catalog.tree_state()).files_with_paths()
        ]
    finally:
        catalog.close()
    return random.Random(3).sample(names, min(len(sample), len(names)))


def _native_files(lib: Path, sample: list[int]) -> list[str]:
    names = [
        os.path.relpath(os.path.join(f, n), lib)
        for f, _, files in os.walk(lib)
        for n in files
        if not n.endswith(".jpg")
    ]
    return random.Random(3).sample(names, min(len(sample), len(names)))


def _million(report: Report, work: Path, count: int) -> None:
    """The synthetic catalog: rows written straight into SQLite, then the real publisher."""
    from musicfs.catalog.db import Catalog
    from musicfs.catalog.naming import Template
    from musicfs.catalog.publish_process import publish_in_child
    from musicfs.catalog.served import ServedTree
    from musicfs.fuse.operations import GIL_SWITCH_INTERVAL

    sys.setswitchinterval(GIL_SWITCH_INTERVAL)  # as the daemon runs
    state = work / "big"
    catalog = Catalog(state / "catalog.sqlite")
    with stopwatch() as took:
        _synthetic_rows(catalog, range(count), version=0)
    log.info("1M: %d synthetic tracks written in %.0f s", count, took[0])
    template = Template()
    # Published as the daemon publishes: planned and written by a child process.
    with stopwatch() as took:
        first = publish_in_child(catalog, template)
    tree = ServedTree(catalog, first.state)
    report.add(
        f"{count:,}: first tree publish (whole catalog planned)",
        took[0],
        "s",
        note=f"in a child process (as the daemon does); its peak RSS "
        f"{first.peak_rss_kib / 1024:.0f} MiB",
    )

    # Lookups on this thread while another publishes a sync of 10,000 changed tracks.
    root = tree.get(1)
    assert root is not None
    folders = [child for _, child in tree.entries(root)]
    rng = random.Random(1)
    changed = rng.sample(range(count), min(10_000, count // 10))

    child_peak: list[int] = []

    def publish_changes() -> None:
        _synthetic_rows(catalog, changed, version=1)
        child_peak.append(publish_in_child(catalog, template).peak_rss_kib)

    publisher = threading.Thread(target=publish_changes)
    latencies: list[float] = []
    publisher.start()
    while publisher.is_alive():
        folder = rng.choice(folders)
        started = time.perf_counter()
        entries = tree.entries(folder)  # an artist: a handful of albums
        if entries:
            name, child = rng.choice(entries)
            tree.lookup(folder.ino, name)
            tree.get(child.ino)
        latencies.append(time.perf_counter() - started)
        time.sleep(0.0005)
    publisher.join()
    report.add(
        f"{count:,}: lookup+getattr p99 while {len(changed):,} changed tracks are published",
        percentile(latencies, 99) * 1000,
        "ms",
        note=f"p50 {percentile(latencies, 50) * 1000:.3f} ms over {len(latencies):,} "
        "(readdir of an artist folder + lookup + getattr, on the reading thread; the "
        "catalog's batches written by another thread, the tree planned and written by a "
        f"child process, as in the daemon; its peak RSS {child_peak[0] / 1024:.0f} MiB)",
    )
    catalog.close()
    del tree

    # The mount of it: an empty origin folder (a listing that would empty the catalog
    # removes nothing), the published tree served at once.
    empty = work / "empty"
    empty.mkdir()
    mnt = work / "bigmnt"
    # The first start after the bench wrote the catalog checks it before mounting; every
    # later start after a clean shutdown checks it once mounted (``clean_close``).
    first = Daemon(empty, state, work / "bigcache", mnt, work / "big0.log")
    try:
        first_s = first.wait_for("mount")
    finally:
        first.stop()
    daemon = Daemon(empty, state, work / "bigcache", mnt, work / "big.log")
    try:
        mount_s = daemon.wait_for("mount")
        rss = _vm(daemon.proc.pid, "VmRSS")
        report.add(
            f"{count:,}: `musicfs mount` until the mount answers",
            mount_s,
            "s",
            note=f"a start after a clean shutdown; daemon RSS {rss:.0f} MiB when it answered "
            f"(before the search index catches up); the first start, which checks the "
            f"catalog the bench wrote before mounting: {first_s:.1f} s",
        )
    finally:
        daemon.stop()


def _synthetic_rows(catalog: object, numbers: object, *, version: int) -> None:
    """Tracks ``numbers`` of the generator as catalog rows of origin ``local`` (no files;
    ``version`` changes their titles and mtimes: a sync that changed them)."""
    from musicfs.catalog.db import Catalog

    assert isinstance(catalog, Catalog)
    batch = []
    for i in numbers:  # type: ignore[attr-defined]
        rel, fmt, tags = plan(i)
        if version:
            tags = type(tags)(**{**tags.as_dict(), "title": f"{tags.title} v{version}"})
        batch.append(
            (f"{rel}.{fmt}", 20_000 + i % 5000, 1_700_000_000 + i + version, None, tags, None)
        )
        if len(batch) == 20_000:
            catalog.upsert("local", batch)
            batch.clear()
    if batch:
        catalog.upsert("local", batch)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    print(main().markdown())
