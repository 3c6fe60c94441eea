"""Cold sequential throughput over S3: one long track read start to end through a real
MusicFS mount over moto, against a single streamed GET of the same object (the minio
client, in the same run, against the same server) -- issue 13's "≥ 0.5× a single streamed
GET".

Each repeat: a fresh mount (empty chunk cache, catalog kept), page cache dropped, the
track read as a player does (128 KiB, then 1 MiB reads); then the same object streamed by
``get_object(...).stream(1 MiB)``. Which track is read rotates, so neither side reads an
object the server just served. The GETs each side sent are counted from moto's access log.

Knobs (environment): ``MUSICFS_BENCH_REPEAT`` (3), ``MUSICFS_BENCH_S3STREAM_MB`` (30),
``MUSICFS_BENCH_S3STREAM_OUT`` (a JSON file to also write, e.g. under /work/results).

Run: ``python -m bench s3stream --no-page``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from bench import Report, drop_page_cache
from bench.peers import MusicFS, make_album, wait_for_tracks
from bench.workloads import read_file

log = logging.getLogger(__name__)


def _gets(moto_log: Path, key: str) -> int:
    """GET requests for ``key`` in moto's access log so far (its lines may be coloured)."""
    needle = f"GET /music/{quote(key)} HTTP"
    with moto_log.open(errors="replace") as f:
        return sum(1 for line in f if needle in line)


def _streamed_get(client: object, key: str) -> tuple[float, int]:
    started = time.perf_counter()
    body = client.get_object("music", key)  # type: ignore[attr-defined]
    n = sum(len(piece) for piece in body.stream(1 << 20))
    body.release_conn()
    return time.perf_counter() - started, n


def main() -> Report:
    from tests.support.netns import NetNS, S3Server

    repeat = int(os.environ.get("MUSICFS_BENCH_REPEAT", "3"))
    size = int(os.environ.get("MUSICFS_BENCH_S3STREAM_MB", "30")) * 1024 * 1024
    out = os.environ.get("MUSICFS_BENCH_S3STREAM_OUT")
    # Extra S3 origin settings, e.g. "streams=0" (the ranged GETs of before) or
    # "stream_after=256K"; comma-separated.
    extra = os.environ.get("MUSICFS_BENCH_S3STREAM_ORIGIN", "")
    work = Path(tempfile.mkdtemp(prefix="musicfs-bench-s3stream-"))
    os.chmod(work, 0o755)
    lib = work / "lib"
    # Tagged MP3s padded with random bytes to ``size`` (distinct sizes: found by size).
    tracks = make_album(lib, repeat, size)
    keys = [str(p.relative_to(lib)) for p in tracks]
    ours_mb_s: list[float] = []
    minio_mb_s: list[float] = []
    ours_gets: list[int] = []
    warm_mb_s: list[float] = []
    minio_gets: list[int] = []
    report = Report(
        "s3stream",
        "S3 cold sequential read of one track: MusicFS mount vs one streamed GET",
        setup={"track_mib": size // (1024 * 1024), "repeat": repeat, "origin_settings": extra},
    )
    try:
        with NetNS() as ns:
            s3 = S3Server(ns, work, auth=False).start()
            s3.upload_tree("music", lib)
            origin = {"url": "s3://music", "name": "s3", "endpoint": s3.endpoint}
            ours = MusicFS("musicfs-s3", origin, work, env=s3.env())
            # The [[origin]] table is the config's last: TOML values as written.
            with ours.config.open("a") as config:
                for item in filter(None, extra.split(",")):
                    config.write(item.strip() + "\n")
            with ours.mount(fresh=True) as mounted:  # the first sync: the catalog
                wait_for_tracks(mounted.path, len(keys))
            client = s3.client()
            for run, key in enumerate(keys):
                with ours.mount(fresh=True) as mounted:
                    want = (lib / key).stat().st_size
                    files = wait_for_tracks(mounted.path, len(keys))
                    path = next(p for p in files if p.stat().st_size == want)
                    drop_page_cache()
                    before = _gets(s3.log, key)
                    started = time.perf_counter()
                    _, n = read_file(path)
                    took = time.perf_counter() - started
                    ours_gets.append(_gets(s3.log, key) - before)
                    # The same read again from the chunk cache: MusicFS's own ceiling.
                    drop_page_cache()
                    started = time.perf_counter()
                    _, warm_n = read_file(path)
                    warm_mb_s.append(warm_n / (time.perf_counter() - started) / 1e6)
                assert n == (lib / key).stat().st_size, f"read {n} bytes of {key}"
                ours_mb_s.append(n / took / 1e6)
                other = keys[(run + 1) % len(keys)]
                before = _gets(s3.log, other)
                took, n = _streamed_get(client, other)
                minio_gets.append(_gets(s3.log, other) - before)
                minio_mb_s.append(n / took / 1e6)
                log.info(
                    "run %d/%d: musicfs %.1f MB/s (%d GETs; from its cache %.1f MB/s), "
                    "streamed GET %.1f MB/s",
                    run + 1,
                    repeat,
                    ours_mb_s[-1],
                    ours_gets[-1],
                    warm_mb_s[-1],
                    minio_mb_s[-1],
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.add_runs(
        "S3: one track read start to end, cold", ours_mb_s, "MB/s", baseline_samples=minio_mb_s
    )
    report.add_runs(
        "S3: the same read again from MusicFS's chunk cache (page cache dropped)",
        warm_mb_s,
        "MB/s",
        baseline_samples=minio_mb_s,
    )
    report.add_runs("S3: GET requests for that read", [float(g) for g in ours_gets], "requests")
    ratio = statistics.median(ours_mb_s) / statistics.median(minio_mb_s)
    report.notes += [
        f"MusicFS at {ratio:.2f}× a single streamed GET (medians of {repeat}); the goal is ≥ 0.5×.",
        f"GETs per read: MusicFS {ours_gets}, the streamed GET {minio_gets}.",
        f"Load average at the end: {os.getloadavg()}.",
    ]
    if out:
        from bench import environment

        data = {
            "report": report.to_json(),
            "ratio": ratio,
            "environment": environment(),
            "uptime": os.popen("uptime").read().strip(),
        }
        Path(out).write_text(json.dumps(data, indent=2, default=str) + "\n")
    return report
