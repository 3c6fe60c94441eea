"""MusicFS against what people use today, A/B in one run on one library and one server:
the native folder, ``sshfs`` and ``rclone mount --vfs-cache-mode full`` over the same
OpenSSH sshd as MusicFS's SFTP origin, and MusicFS over S3 against the minio client.

Every scenario is run ``MUSICFS_BENCH_REPEAT`` times (3), the peers in a rotating order;
rows are medians with the range of the runs. "Cold" is a fresh mount with the page cache
dropped and the peer's data cache emptied (rclone's VFS cache, MusicFS's chunk cache;
MusicFS keeps its catalog, as it does across a reboot); "warm" is the same again on that
mount with only the page cache dropped, so what a peer kept on local disk counts.

* ``ls -R`` / ``ls -lR``, cold and warm;
* full sequential read (every file, 1 MiB reads) cold and warm, and time to first byte
  (open + the first 128 KiB of each file, cold);
* 16 parallel readers, each streaming its own files (cold);
* a library scanner: ``ffprobe`` of every track, its time and the bytes the server sent
  (an nftables counter in the server's namespace);
* the peak RSS (VmHWM) of each FUSE process over those;
* the cold rows again over a 100 Mbit/s link (``tc ... tbf`` on both ends of the veth);
* faults, with MusicFS's shipped deadlines: read latency p50 / p99 / max while the server
  is blackholed (nftables drop), killed (sshd and every session), frozen (SIGSTOP), and the
  time from the fault's end to the first good uncached read.

Needs root, /dev/fuse, sshd, nft, tc, sshfs, rclone, ffprobe (``scripts/setup-debian.sh
bench``). Knobs (environment): ``MUSICFS_BENCH_REPEAT`` (3), ``MUSICFS_BENCH_FAULT_REPEAT``
(2), ``MUSICFS_BENCH_REMOTE_SMALL`` (200 small tagged tracks), ``MUSICFS_BENCH_REMOTE_LARGE``
(16 tracks of ``MUSICFS_BENCH_REMOTE_MB`` = 8 MiB), ``MUSICFS_BENCH_FAULT_SECONDS`` (10),
``MUSICFS_BENCH_RECOVER_CAP`` (30), ``MUSICFS_BENCH_SHAPED`` (``100mbit``; ``0``: skip),
``MUSICFS_BENCH_PEERS`` (``native,sshfs,rclone``), ``MUSICFS_BENCH_S3`` (1).

Run: ``python -m bench remote`` (or ``make bench BENCH_ARGS=remote``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench import Report, Row, drop_page_cache
from bench.peers import (
    Mounted,
    MusicFS,
    Native,
    Peer,
    Rclone,
    Sshfs,
    require_tools,
    shaped,
    wait_for_tracks,
)
from bench.workloads import during_fault, ls, percentile, read_all, read_parallel, scan

if TYPE_CHECKING:
    from tests.support.netns import ByteCounter
from musicfs.config import FuseSettings, OriginTimeouts
from musicfs.service.mounts import find_mount, lazy_unmount

log = logging.getLogger("bench.remote")

Samples = dict[str, dict[str, list[float]]]  # metric -> peer -> one figure per run

# Why a peer beats MusicFS on a row, when it does (shown only on rows it wins).
_CHUNKS = (
    "the SSH transport is not the bound (SFTPOrigin alone streams at about sshfs's figure "
    "from trio, a bare asyncssh client faster); a cold MusicFS read carries the FUSE "
    "requests, the reader and the hashing and storing of every chunk on one interpreter and "
    "two cores: even from its own chunk cache it serves 250-330 MB/s"
)
_RECHECK = (
    "MusicFS has declared the origin unhealthy and fails uncached reads fast; while reads "
    "keep failing it re-checks the origin every 2 s, so the first good read waits for the "
    "next check"
)
WHY: dict[tuple[str, str], str] = {
    ("sshfs", "sequential read"): f"sshfs streams with many SFTP reads in flight; {_CHUNKS}",
    ("sshfs", "parallel readers"): f"each sshfs reader streams with many reads in flight; "
    f"{_CHUNKS}",
    ("sshfs", "first byte"): "sshfs asks the server for the 128 KiB the player asked for; "
    "SFTPOrigin alone reads it cold in 1.6-2.9 ms, and in the mount a first open costs "
    "~0.5 ms and a first read waits 0.3-4.5 ms for the interpreter before the origin is asked",
    ("sshfs", "recovered"): "sshfs's blocked reads carry on over the same TCP connection "
    f"once packets flow; {_RECHECK}",
    ("sshfs", "MB sent"): "sshfs fetches only the bytes ffprobe asks for; MusicFS fetches "
    "the 64 KiB pieces around them (verified and kept)",
    ("sshfs", "library scan"): "ffprobe reads a little at the head and tail of each track "
    "and sshfs fetches just that; MusicFS fetches, verifies and stores the 64 KiB pieces "
    "around it",
    ("rclone", "recovered"): f"rclone retries the read as soon as the server answers; {_RECHECK}",
    ("rclone", "parallel readers"): f"rclone streams each file into its VFS cache; {_CHUNKS}",
    ("rclone", "library scan"): "rclone's VFS fetches what ffprobe asks for into its cache "
    "file; MusicFS fetches, verifies and stores 64 KiB pieces",
    ("minio", "parallel readers"): "16 streamed GETs at once; MusicFS keeps at most 4 "
    "streams open and hashes and stores every chunk on one interpreter",
    ("rclone", "sequential read"): "rclone streams each file into its VFS cache and serves "
    "reads as the bytes arrive",
    ("rclone", "first byte"): "rclone returns the first bytes of its download while it goes "
    "on; a cold MusicFS read waits for its 64 KiB pieces from asyncssh on another thread",
    ("minio", "sequential read"): "one streamed GET per object; MusicFS streams too once a "
    "read has gone 1 MiB (a GET kept open, a few per track), but its read path bounds it: "
    "from its own chunk cache it serves 250-330 MB/s",
    ("minio", "first byte"): "a 128 KiB ranged GET; a cold MusicFS read makes the same GET "
    "from a worker thread and answers once its 64 KiB pieces arrived",
}
NATIVE_WHY = "no FUSE round trip and no network: the kernel reads its own disk"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


LS_WHY = (
    "MusicFS answers listings from its catalog without the network, so this is FUSE "
    "overhead per entry against a peer's warm directory cache, within run-to-run noise at "
    "this size"
)


def _why(peer: str, metric: str) -> str:
    if peer == "native":
        return NATIVE_WHY
    if metric.startswith("peak RSS"):
        return RSS_WHY.get(peer, "not analysed")
    for (who, topic), text in WHY.items():
        if who == peer and topic in metric:
            return text
    if metric.startswith("ls "):
        return LS_WHY
    return "not analysed"


def make_library(small: int, large: int, large_mb: int) -> list[Path]:
    """bench_library's generated library (cached between runs), at this size."""
    from bench.bench_library import library

    lib, _ = library(small + large, large, large_mb)
    return sorted(p for p in lib.rglob("*") if p.is_file() and p.suffix != ".jpg")


class Matrix:
    """Runs one workload on every peer, repeat after repeat, and keeps every figure."""

    def __init__(self, peers: list[Peer], files_of: Callable[[Mounted], list[Path]]):
        self.peers = peers
        self.files_of = files_of
        self.samples: Samples = defaultdict(lambda: defaultdict(list))
        self.rss: dict[str, float] = defaultdict(float)

    def session(
        self, run: int, fresh: bool, work: Callable[[str, Mounted, list[Path]], None]
    ) -> None:
        """``work(peer, mounted, files)`` on each peer, in an order rotated by ``run``."""
        order = self.peers[run % len(self.peers) :] + self.peers[: run % len(self.peers)]
        for peer in order:
            with peer.mount(fresh=fresh) as mounted:
                files = self.files_of(mounted)
                drop_page_cache()
                work(peer.name, mounted, files)
                rss = mounted.peak_rss_mib()
                if rss is not None:
                    self.rss[peer.name] = max(self.rss[peer.name], rss)

    def add(self, metric: str, peer: str, value: float) -> None:
        self.samples[metric][peer].append(value)


def main() -> Report:
    from tests.support.netns import ByteCounter, NetNS, S3Server, SSHServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    repeat = int(_env("MUSICFS_BENCH_REPEAT", "3"))
    fault_repeat = int(_env("MUSICFS_BENCH_FAULT_REPEAT", "2"))
    small = int(_env("MUSICFS_BENCH_REMOTE_SMALL", "200"))
    large = int(_env("MUSICFS_BENCH_REMOTE_LARGE", "16"))
    large_mb = int(_env("MUSICFS_BENCH_REMOTE_MB", "8"))
    fault_s = float(_env("MUSICFS_BENCH_FAULT_SECONDS", "10"))
    recover_cap = float(_env("MUSICFS_BENCH_RECOVER_CAP", "30"))
    rate = _env("MUSICFS_BENCH_SHAPED", "100mbit")
    peer_names = _env("MUSICFS_BENCH_PEERS", "native,sshfs,rclone").split(",")
    with_s3 = _env("MUSICFS_BENCH_S3", "1") == "1"
    require_tools("sshfs", "rclone", "nft", "tc", "ffprobe", "/usr/sbin/sshd")

    files = make_library(small, large, large_mb)
    lib = _root_of(files)
    rels = [p.relative_to(lib) for p in files]
    total = sum(p.stat().st_size for p in files)
    deadline, operation = FuseSettings().read_deadline, OriginTimeouts().operation
    report = Report(
        "remote",
        "MusicFS against native disk, sshfs, rclone and the minio client",
        setup={
            "tracks": len(files),
            "small_tracks": small,
            "large_tracks": large,
            "large_track_mib": large_mb,
            "bytes": total,
            "repeat": repeat,
            "fault_repeat": fault_repeat,
            "fault_seconds": fault_s,
            "recover_cap_s": recover_cap,
            "shaped_rate": rate,
            "read_deadline_s": deadline,
            "operation_timeout_s": operation,
            "sshfs_options": "ro,reconnect,ServerAliveInterval=15",
            "rclone_options": "--vfs-cache-mode full --read-only",
        },
    )
    work_dir = Path(tempfile.mkdtemp(prefix="musicfs-bench-remote-"))
    os.chmod(work_dir, 0o755)
    try:
        with NetNS() as ns:
            sshd = SSHServer(ns, work_dir, user="root").start()
            counter = ByteCounter(ns)
            origin = sshd.origin(lib)
            ours = MusicFS("musicfs", origin, work_dir)
            with ours.mount(fresh=True) as mounted:  # the first scan: the catalog
                log.info("MusicFS: first scan of %d tracks over SFTP", len(files))
                wait_for_tracks(mounted.path, len(files))
            known: dict[str, Peer] = {
                "native": Native(lib),
                "sshfs": Sshfs(sshd, lib, work_dir),
                "rclone": Rclone(sshd, lib, work_dir),
            }
            peers: list[Peer] = [ours, *(known[n] for n in peer_names)]
            matrix = Matrix(peers, _files_of(rels))
            for run in range(repeat):
                log.info("run %d/%d: listing, reads, scanner", run + 1, repeat)
                _listing_and_reads(matrix, run, counter)
            if rate != "0":
                shaped_peers = [p for p in peers if p.name != "native"]
                matrix_shaped = Matrix(shaped_peers, matrix.files_of)
                with shaped(ns, rate):
                    for run in range(repeat):
                        log.info("run %d/%d: cold rows over a %s link", run + 1, repeat, rate)
                        _shaped(matrix_shaped, run, rate)
                for metric, per_peer in matrix_shaped.samples.items():
                    matrix.samples[metric] = per_peer
            fault_peers = [p for p in peers if p.name != "native"]
            faults = Matrix(fault_peers, matrix.files_of)
            for run in range(fault_repeat):
                log.info("run %d/%d: faults", run + 1, fault_repeat)
                _faults(faults, run, ns, sshd, fault_s, recover_cap)
            matrix.samples.update(faults.samples)
            _rows(report, matrix, "musicfs", recover_cap)
            for name, rss in matrix.rss.items():
                report.setup.setdefault("peak_rss_mib", {})[name] = rss
            _rss_rows(report, matrix.rss)
        if with_s3:
            with NetNS() as ns3:
                s3 = S3Server(ns3, work_dir, auth=False).start()
                s3.upload_tree("music", lib)
                origin = {"url": "s3://music", "name": "s3", "endpoint": s3.endpoint}
                ours3 = MusicFS("musicfs-s3", origin, work_dir, env=s3.env())
                with ours3.mount(fresh=True) as mounted:
                    wait_for_tracks(mounted.path, len(files))
                s3_matrix = Matrix([ours3], _files_of(rels))
                for run in range(repeat):
                    log.info("run %d/%d: S3", run + 1, repeat)
                    _s3(s3_matrix, run, s3.client(), [str(r) for r in rels])
                _rows(report, s3_matrix, "musicfs-s3")
    finally:
        for mnt in work_dir.glob("*mnt"):
            if find_mount(mnt) is not None:
                lazy_unmount(mnt)
        shutil.rmtree(work_dir, ignore_errors=True)
    report.notes += [
        f"{len(files)} tracks, {total / 1e6:.0f} MB: {small} small tagged tracks (1-22 KB, "
        f"seven formats) and {large} of {large_mb} MiB; albums of ten.",
        f"Medians of {repeat} runs (faults: {fault_repeat}); the range of the runs in "
        "brackets. Ratio: how many times slower MusicFS is (below 1: faster).",
        "Cold: a fresh mount, page cache dropped, the peer's data cache emptied (rclone's "
        "VFS cache, MusicFS's chunk cache; MusicFS keeps its catalog). Warm: the same "
        "mount again with the page cache dropped.",
        f"Faults use MusicFS's shipped deadlines (read_deadline {deadline:g} s, operation "
        f"timeout {operation:g} s); a read still blocked {recover_cap:g} s after the fault "
        "ended counts with the time it had waited then.",
    ]
    return report


def _root_of(files: list[Path]) -> Path:
    root = files[0].parent
    while not all(root in f.parents for f in files):
        root = root.parent
    return root


def _files_of(rels: list[Path]) -> Callable[[Mounted], list[Path]]:
    """Each mount's copy of the library: the origin's paths on the peers that mirror the
    folder, every listed track on MusicFS (whose tree is named by tags)."""

    def files(mounted: Mounted) -> list[Path]:
        if (mounted.path / rels[0]).exists():
            return [mounted.path / r for r in rels]
        return wait_for_tracks(mounted.path, len(rels))

    return files


def _listing_and_reads(matrix: Matrix, run: int, counter: ByteCounter) -> None:
    def listing(long: bool) -> Callable[[str, Mounted, list[Path]], None]:
        name = "ls -lR" if long else "ls -R"

        def work(peer: str, mounted: Mounted, files: list[Path]) -> None:
            matrix.add(f"{name}, cold", peer, ls(mounted.path, long))
            matrix.add(f"{name}, warm", peer, ls(mounted.path, long))

        return work

    matrix.session(run, True, listing(False))
    matrix.session(run, False, listing(True))

    def reads(peer: str, mounted: Mounted, files: list[Path]) -> None:
        cold = read_all(files)
        matrix.add("sequential read of every file, cold", peer, cold.mb_s)
        matrix.add("time to first byte (open + 128 KiB), cold", peer, 1000 * median(cold.ttfb))
        drop_page_cache()
        matrix.add("sequential read of every file, warm", peer, read_all(files).mb_s)

    matrix.session(run, True, reads)

    def parallel(peer: str, mounted: Mounted, files: list[Path]) -> None:
        matrix.add("16 parallel readers, cold", peer, read_parallel(files, 16).mb_s)

    matrix.session(run, True, parallel)

    def scanner(peer: str, mounted: Mounted, files: list[Path]) -> None:
        before = counter.bytes()
        took = scan(files)
        matrix.add("library scan (ffprobe of every track), cold", peer, took)
        if peer != "native":
            sent = (counter.bytes() - before) / 1e6
            matrix.add("library scan: MB sent by the server", peer, sent)

    matrix.session(run, True, scanner)


def _shaped(matrix: Matrix, run: int, rate: str) -> None:
    label = f" over {rate.replace('mbit', ' Mbit/s')}"

    def work(peer: str, mounted: Mounted, files: list[Path]) -> None:
        matrix.add(f"ls -lR, cold{label}", peer, ls(mounted.path, True))
        cold = read_all(files)
        matrix.add(f"sequential read of every file, cold{label}", peer, cold.mb_s)
        matrix.add(
            f"time to first byte (open + 128 KiB), cold{label}", peer, 1000 * median(cold.ttfb)
        )

    matrix.session(run, True, work)

    def scanner(peer: str, mounted: Mounted, files: list[Path]) -> None:
        matrix.add(f"library scan (ffprobe of every track), cold{label}", peer, scan(files))

    matrix.session(run, True, scanner)


def _faults(
    matrix: Matrix,
    run: int,
    ns: object,
    sshd: object,
    seconds: float,
    recover_cap: float,
) -> None:
    from tests.support.netns import NetNS, SSHServer

    assert isinstance(ns, NetNS) and isinstance(sshd, SSHServer)

    def stop_all(sig: signal.Signals) -> Callable[[], None]:
        def send() -> None:
            for pid in ns.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

        return send

    kinds: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "blackholed": (ns.blackhole, ns.unblackhole),
        "server killed": (sshd.kill, lambda: (sshd.start(), None)[1]),
        "server frozen": (stop_all(signal.SIGSTOP), stop_all(signal.SIGCONT)),
    }
    for kind, (start, end) in kinds.items():

        def work(
            peer: str,
            mounted: Mounted,
            files: list[Path],
            kind: str = kind,
            start: Callable[[], None] = start,
            end: Callable[[], None] = end,
        ) -> None:
            large = [f for f in files if f.stat().st_size >= 1 << 20]
            assert read_all(large[:1]).nbytes > 0  # connected
            fault = during_fault(large[1:], start, end, seconds, recover_cap)
            lat = fault.latencies or [float("nan")]
            matrix.add(f"{kind}: read latency p50", peer, 1000 * percentile(lat, 50))
            matrix.add(f"{kind}: read latency p99", peer, 1000 * percentile(lat, 99))
            matrix.add(f"{kind}: read latency max", peer, max(lat))
            recovered = fault.recovered_s if fault.recovered_s is not None else recover_cap
            matrix.add(f"{kind}: recovered after the fault ended", peer, recovered)

        matrix.session(run, True, work)


UNITS = {
    "ls": ("s", False),
    "sequential read": ("MB/s", True),
    "parallel": ("MB/s", True),
    "first byte": ("ms", False),
    "MB sent": ("MB", False),
    "library scan": ("s", False),
    "latency p50": ("ms", False),
    "latency p99": ("ms", False),
    "latency max": ("s", False),
    "recovered": ("s", False),
}


def _unit(metric: str) -> tuple[str, bool]:
    for key, unit in UNITS.items():
        if key in metric:
            return unit
    raise KeyError(metric)


def _rows(report: Report, matrix: Matrix, ours: str, cap: float = 0.0) -> None:
    for metric, per_peer in matrix.samples.items():
        unit, higher = _unit(metric)
        mine = per_peer.get(ours)
        if not mine:
            continue
        peers = [p for p in per_peer if p != ours]
        if not peers:
            report.add_runs(metric, mine, unit, higher_is_better=higher)
        for peer in peers:
            row = report.add_runs(
                metric,
                mine,
                unit,
                baseline_samples=per_peer[peer],
                baseline_name=peer,
                higher_is_better=higher,
            )
            annotate(row, cap)


def annotate(row: Row, cap: float) -> None:
    """Say who wins a row and why, and when a recovery hit the cap (no good read)."""
    notes = []
    if "recovered" in row.metric and cap > 0:
        for who, samples in (("MusicFS", row.samples), (row.baseline_name, row.baseline_samples)):
            hits = sum(v >= cap for v in samples)
            if hits:
                notes.append(
                    f"{who}: no good uncached read within the {cap:g} s cap "
                    f"in {hits} of {len(samples)} runs"
                )
    if row.peer_wins:
        notes.append(f"{row.baseline_name} wins: {_why(row.baseline_name, row.metric)}")
    row.note = "; ".join(notes)


def renote(path: Path) -> None:
    """Recompute the notes of a saved report (the figures are left as measured)."""
    import json

    data = json.loads(path.read_text())
    cap = float(data["setup"]["recover_cap_s"])
    for raw in data["rows"]:
        fields = {k: v for k, v in raw.items() if k != "slowdown"}
        row = Row(**fields)
        if row.baseline_name:
            annotate(row, cap)
            raw["note"] = row.note
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _rss_rows(report: Report, rss: dict[str, float]) -> None:
    for peer, value in rss.items():
        if peer == "musicfs":
            continue
        report.add(
            "peak RSS of the FUSE process (VmHWM)",
            rss.get("musicfs", 0.0),
            "MiB",
            baseline=value,
            baseline_name=peer,
        )
        annotate(report.rows[-1], 0.0)


_OURS_RSS = (
    "MusicFS is a Python process holding its catalog snapshot, LMDB and search indexes "
    "and up to 16 MiB of verified chunks"
)
RSS_WHY = {
    "sshfs": f"sshfs is a small C program that keeps no data; {_OURS_RSS}",
    "rclone": f"rclone is one Go binary whose VFS cache is on disk; {_OURS_RSS}",
}


def median(values: list[float]) -> float:
    return statistics.median(values)


def _s3(matrix: Matrix, run: int, client: object, keys: list[str]) -> None:
    from bench.workloads import FIRST

    def reads(peer: str, mounted: Mounted, files: list[Path]) -> None:
        cold = read_all(files)
        matrix.add("S3: sequential read of every file, cold", peer, cold.mb_s)
        matrix.add("S3: time to first byte (open + 128 KiB), cold", peer, 1000 * median(cold.ttfb))

    def parallel(peer: str, mounted: Mounted, files: list[Path]) -> None:
        matrix.add("S3: 16 parallel readers, cold", peer, read_parallel(files, 16).mb_s)

    matrix.session(run, True, reads)
    matrix.session(run, True, parallel)
    seq, ttfb = _raw_gets(client, keys, FIRST)
    matrix.add("S3: sequential read of every file, cold", "minio", seq)
    matrix.add("S3: time to first byte (open + 128 KiB), cold", "minio", ttfb)
    matrix.add("S3: 16 parallel readers, cold", "minio", _raw_parallel(client, keys))


def _raw_gets(client: object, keys: list[str], first: int) -> tuple[float, float]:
    """The minio client's own GETs: a ranged GET of the first 128 KiB (timed as first
    byte), then the rest streamed; (MB/s over all, median ms to first byte)."""
    ttfb: list[float] = []
    nbytes = 0
    started = time.perf_counter()
    for key in keys:
        began = time.perf_counter()
        head = client.get_object("music", key, offset=0, length=first)  # type: ignore[attr-defined]
        got = len(head.read())
        head.release_conn()
        ttfb.append(time.perf_counter() - began)
        nbytes += got
        if got < first:
            continue  # the whole object
        body = client.get_object("music", key, offset=first)  # type: ignore[attr-defined]
        for piece in body.stream(1 << 20):
            nbytes += len(piece)
        body.release_conn()
    return nbytes / (time.perf_counter() - started) / 1e6, 1000 * median(ttfb)


def _raw_parallel(client: object, keys: list[str]) -> float:
    from concurrent.futures import ThreadPoolExecutor

    def get(key: str) -> int:
        body = client.get_object("music", key)  # type: ignore[attr-defined]
        n = sum(len(piece) for piece in body.stream(1 << 20))
        body.release_conn()
        return n

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        nbytes = sum(pool.map(get, keys))
    return nbytes / (time.perf_counter() - started) / 1e6


if __name__ == "__main__":
    import sys

    result = main()
    print(result.markdown())
    print(f"\nsaved {result.save()}")
    sys.exit(0)
