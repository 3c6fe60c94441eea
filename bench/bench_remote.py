"""Remote origins (issue 4, "Measure"): MusicFS over SFTP and S3 against the usual tools,
all in the same run, on the same files, against the same servers.

* cold sequential read throughput and time to first byte (first 128 KiB) through a fresh
  MusicFS mount over SFTP vs ``sshfs`` and ``rclone mount --vfs-cache-mode full`` on the
  same OpenSSH sshd (ratios);
* the same through MusicFS over S3 vs the minio client's raw ranged GET on the same moto
  server;
* the distribution (p50/p99/max) of FUSE read latency while the SFTP server is blackholed
  (an nftables rule dropping every packet), with MusicFS's default deadlines, next to how
  long one read blocks on sshfs and rclone under the same blackhole (capped).

Each server runs in its own network namespace joined by a veth link (see
``tests/support/netns.py``); the server's own disk cache is warmed first so the figures
compare protocol stacks, not disks. Needs root, /dev/fuse, sshd, nft, sshfs, rclone
(``scripts/setup-debian.sh bench``).

Knobs (environment): ``MUSICFS_BENCH_REMOTE_FILES`` (4), ``MUSICFS_BENCH_REMOTE_MB`` (16),
``MUSICFS_BENCH_BLACKHOLE_SECONDS`` (12), ``MUSICFS_BENCH_BASELINE_CAP`` (30 s a baseline
read may block under the blackhole before it is reported as "still blocked").

Run: ``python -m bench.bench_remote`` (or ``make bench BENCH_ARGS=remote``).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from bench import Report
from musicfs.catalog.tags import Tags
from musicfs.config import FuseSettings, OriginTimeouts
from musicfs.service.mounts import find_mount, lazy_unmount

log = logging.getLogger("bench.remote")

FIRST = 128 * 1024  # what a player asks for first
CHUNK = 1024 * 1024


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass
class ColdRead:
    ttfb: list[float]
    seconds: float
    nbytes: int

    @property
    def mb_s(self) -> float:
        return self.nbytes / self.seconds / 1e6

    @property
    def ttfb_ms(self) -> float:
        return statistics.median(self.ttfb) * 1000


def read_cold(paths: list[Path]) -> ColdRead:
    """Open each file, time the first 128 KiB, then read the rest sequentially."""
    ttfb, total, nbytes = [], 0.0, 0
    for path in paths:
        started = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, FIRST, 0)
            ttfb.append(time.perf_counter() - started)
            pos = len(data)
            while True:
                data = os.pread(fd, CHUNK, pos)
                if not data:
                    break
                pos += len(data)
        finally:
            os.close(fd)
        total += time.perf_counter() - started
        nbytes += pos
    return ColdRead(ttfb, total, nbytes)


def make_library(root: Path, files: int, size: int) -> list[Path]:
    from tests.support.library import tagged_file

    made = []
    for i in range(files):
        path = root / "Artist" / "Album" / f"{i + 1:02d}.mp3"
        tagged_file(path, "mp3", Tags(title=f"Track {i}", artist="Artist", album="Album"))
        with path.open("ab") as f:
            # Distinct sizes let every mount's copy be matched to its origin file.
            f.write(random.Random(i).randbytes(size + i * 4096 - path.stat().st_size))
        made.append(path)
    for p in [root, *root.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return made


def by_size(mnt: Path) -> dict[int, Path]:
    return {p.stat().st_size: p for p in mnt.rglob("*") if p.is_file()}


def wait_for_files(mnt: Path, count: int, timeout: float = 120) -> dict[int, Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = by_size(mnt) if find_mount(mnt) is not None else {}
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise RuntimeError(f"{mnt}: files did not appear within {timeout}s")


@contextmanager
def musicfs_mount(
    work: Path, tag: str, origin: dict[str, object], env: dict[str, str]
) -> Iterator[Path]:
    """A fresh MusicFS (empty catalog and cache) with default deadlines."""
    from tests.support.daemon import MountedDaemon

    base = work / f"musicfs-{tag}"
    base.mkdir()
    lines = ["[library]", "scan_interval = 0", "[[origin]]"]
    for key, value in origin.items():
        lines.append(f'{key} = "{value}"')
    (base / "musicfs.toml").write_text("\n".join(lines) + "\n")
    daemon = MountedDaemon(
        base / "mnt",
        [],
        base / "state",
        cache_dir=base / "cache",
        config=base / "musicfs.toml",
        env=env,
    )
    with daemon:
        yield daemon.mountpoint


@contextmanager
def foreign_mount(cmd: list[str], mnt: Path, log_path: Path) -> Iterator[Path]:
    mnt.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while find_mount(mnt) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} did not mount:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield mnt
    finally:
        lazy_unmount(mnt)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def sshfs_cmd(server: object, lib: Path, mnt: Path) -> list[str]:
    from tests.support.netns import SSHServer

    assert isinstance(server, SSHServer)
    return [
        "sshfs",
        "-f",
        f"root@{server.ns.ip}:{lib}",
        str(mnt),
        "-o",
        f"ro,IdentityFile={server.client_key},UserKnownHostsFile={server.known_hosts},"
        "StrictHostKeyChecking=yes,BatchMode=yes",
    ]


def rclone_cmd(server: object, lib: Path, mnt: Path, cache: Path) -> list[str]:
    from tests.support.netns import SSHServer

    assert isinstance(server, SSHServer)
    remote = (
        f":sftp,host={server.ns.ip},user=root,key_file={server.client_key},"
        f"known_hosts_file={server.known_hosts}:{lib}"
    )
    return [
        "rclone",
        "mount",
        remote,
        str(mnt),
        "--vfs-cache-mode",
        "full",
        "--read-only",
        "--cache-dir",
        str(cache),
        "--config",
        "/dev/null",
    ]


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def blackhole_latencies(paths: list[Path], seconds: float, threads: int = 4) -> list[float]:
    """Player-like reads of uncached blocks from several threads while the origin is
    unreachable; every read's duration, whatever its outcome."""
    durations: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            path = rng.choice(paths)
            offset = rng.randrange(0, max(1, path.stat().st_size - FIRST), 4096)
            started = time.perf_counter()
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.pread(fd, FIRST, offset)
                finally:
                    os.close(fd)
            except OSError:
                pass
            with lock:
                durations.append(time.perf_counter() - started)
            time.sleep(0.02)

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return durations


def blocked_for(read: Callable[[], object], cap: float) -> tuple[float, threading.Thread]:
    """How long one read blocks (up to ``cap``); the thread is returned to be joined later."""
    done = threading.Event()

    def run() -> None:
        with suppress(OSError):
            read()
        done.set()

    started = time.perf_counter()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    done.wait(cap)
    return time.perf_counter() - started, thread


def uncached_read(path: Path, offset: int) -> Callable[[], object]:
    def read() -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, FIRST, offset)
        finally:
            os.close(fd)

    return read


def main() -> Report:
    from tests.support.netns import NetNS, S3Server, SSHServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    files = int(_env("MUSICFS_BENCH_REMOTE_FILES", 4))
    size = int(_env("MUSICFS_BENCH_REMOTE_MB", 16) * 1024 * 1024)
    hole_seconds = _env("MUSICFS_BENCH_BLACKHOLE_SECONDS", 12)
    cap = _env("MUSICFS_BENCH_BASELINE_CAP", 30)
    for tool in ("sshfs", "rclone", "nft", "/usr/sbin/sshd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: run scripts/setup-debian.sh bench")
    deadline, operation = FuseSettings().read_deadline, OriginTimeouts().operation
    report = Report(
        "remote",
        "Remote origins: cold reads over SFTP and S3, reads while the origin is blackholed",
        setup={
            "files": files,
            "file_mb": size / 2**20,
            "first_read_kib": FIRST // 1024,
            "read_deadline_s": deadline,
            "operation_timeout_s": operation,
            "blackhole_seconds": hole_seconds,
            "baseline_cap_s": cap,
        },
    )
    report.notes.append(
        f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs: "
        "figures were taken on a shared, loaded machine"
    )
    work = Path(tempfile.mkdtemp(prefix="musicfs-bench-remote-"))
    os.chmod(work, 0o755)
    try:
        lib = work / "lib"
        made = make_library(lib, files, size)
        sizes = [p.stat().st_size for p in made]
        for p in made:  # the server reads from a warm page cache for every tool alike
            p.read_bytes()

        with NetNS() as ns:
            sshd = SSHServer(ns, work, user="root").start()
            origin = {
                "url": sshd.url(lib),
                "name": "nas",
                "key_file": sshd.client_key,
                "known_hosts": sshd.known_hosts,
            }
            log.info("MusicFS over SFTP: cold reads")
            with musicfs_mount(work, "sftp", origin, {}) as mnt:
                found = wait_for_files(mnt, files)
                ours = read_cold([found[s] for s in sizes])
            log.info("sshfs: cold reads")
            with foreign_mount(
                sshfs_cmd(sshd, lib, work / "sshfs"), work / "sshfs", work / "sshfs.log"
            ) as mnt:
                sshfs = read_cold([mnt / p.relative_to(lib) for p in made])
            log.info("rclone mount --vfs-cache-mode full: cold reads")
            rclone_mnt = work / "rclone"
            with foreign_mount(
                rclone_cmd(sshd, lib, rclone_mnt, work / "rclone-cache"),
                rclone_mnt,
                work / "rclone.log",
            ) as mnt:
                rclone = read_cold([mnt / p.relative_to(lib) for p in made])
            for name, base in (("sshfs", sshfs), ("rclone --vfs-cache-mode full", rclone)):
                report.add(
                    "SFTP cold read throughput",
                    ours.mb_s,
                    "MB/s",
                    baseline=base.mb_s,
                    baseline_name=name,
                    higher_is_better=True,
                )
                report.add(
                    "SFTP time to first byte (median)",
                    ours.ttfb_ms,
                    "ms",
                    baseline=base.ttfb_ms,
                    baseline_name=name,
                )

            log.info("blackhole: MusicFS read latency with default deadlines")
            with musicfs_mount(work, "hole", origin, {}) as mnt:
                found = wait_for_files(mnt, files)
                paths = [found[s] for s in sizes]
                uncached_read(paths[0], 0)()  # connected and healthy
                ns.blackhole()
                try:
                    lat = blackhole_latencies(paths[1:] or paths, hole_seconds)
                finally:
                    ns.unblackhole()
            report.add("blackholed: FUSE read latency p50", percentile(lat, 50) * 1000, "ms")
            report.add("blackholed: FUSE read latency p99", percentile(lat, 99) * 1000, "ms")
            report.add(
                "blackholed: FUSE read latency max",
                max(lat),
                "s",
                note=f"{len(lat)} reads; read_deadline {deadline:g}s",
            )
            for name, cmd_for in (
                ("sshfs", lambda m: sshfs_cmd(sshd, lib, m)),
                (
                    "rclone --vfs-cache-mode full",
                    lambda m: rclone_cmd(sshd, lib, m, work / "rclone-cache-2"),
                ),
            ):
                tag = name.split()[0]
                mnt_dir = work / f"{tag}-hole"
                with foreign_mount(cmd_for(mnt_dir), mnt_dir, work / f"{tag}-hole.log") as mnt:
                    target = mnt / made[-1].relative_to(lib)
                    uncached_read(target, 0)()
                    ns.blackhole()
                    try:
                        took, thread = blocked_for(uncached_read(target, size // 2), cap)
                    finally:
                        ns.unblackhole()
                    thread.join(60)
                still = took >= cap
                report.add(
                    "blackholed: one uncached read blocks",
                    max(lat),
                    "s",
                    baseline=took,
                    baseline_name=name,
                    note=f"{name} still blocked at the {cap:g}s cap" if still else "",
                )

        with NetNS() as ns3:
            s3 = S3Server(ns3, work, auth=False).start()
            s3.upload_tree("music", lib)
            origin = {"url": "s3://music", "name": "s3", "endpoint": s3.endpoint}
            log.info("MusicFS over S3: cold reads")
            with musicfs_mount(work, "s3", origin, s3.env()) as mnt:
                found = wait_for_files(mnt, files)
                ours = read_cold([found[s] for s in sizes])
            log.info("minio client: raw GETs")
            raw = raw_gets(s3.client(), [str(p.relative_to(lib)) for p in made])
            report.add(
                "S3 cold read throughput",
                ours.mb_s,
                "MB/s",
                baseline=raw.mb_s,
                baseline_name="minio get_object",
                higher_is_better=True,
            )
            report.add(
                "S3 time to first byte (median)",
                ours.ttfb_ms,
                "ms",
                baseline=raw.ttfb_ms,
                baseline_name="minio ranged get_object",
            )
    finally:
        for mnt in work.glob("*/mnt"):
            if find_mount(mnt) is not None:
                lazy_unmount(mnt)
        shutil.rmtree(work, ignore_errors=True)
    return report


def raw_gets(client: object, keys: list[str]) -> ColdRead:
    ttfb, total, nbytes = [], 0.0, 0
    for key in keys:
        started = time.perf_counter()
        head = client.get_object("music", key, offset=0, length=FIRST)  # type: ignore[attr-defined]
        head.read()
        head.release_conn()
        ttfb.append(time.perf_counter() - started)
        body = client.get_object("music", key, offset=FIRST)  # type: ignore[attr-defined]
        for piece in body.stream(CHUNK):
            nbytes += len(piece)
        body.release_conn()
        nbytes += FIRST
        total += time.perf_counter() - started
    return ColdRead(ttfb, total, nbytes)


if __name__ == "__main__":
    result = main()
    print(result.markdown())
    print(f"\nsaved {result.save()}")
    sys.exit(0)
