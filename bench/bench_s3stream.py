"""Cold sequential throughput over S3: one long track read start to end through a real
MusicFS mount over moto, against a single streamed GET of the same object (the minio
client, in the same run, against the same server) -- issue 13's "≥ 0.5× a single streamed
GET".

Each repeat reads one of the tracks (a different one each repeat) on every side, in an
order rotated by the repeat: MusicFS through a fresh mount (empty chunk cache, catalog
kept, page cache dropped) as a player reads (128 KiB, then 1 MiB reads), then again from
its chunk cache (page cache dropped: MusicFS's own ceiling); the same MusicFS with other
S3 settings (by default ``streams = 0``: one ranged GET per read, as before streaming
GETs); and ``get_object(...).stream(1 MiB)`` of the same object. The GETs each side sent
are counted from moto's access log.

Knobs (environment): ``MUSICFS_BENCH_REPEAT`` (3), ``MUSICFS_BENCH_S3STREAM_MB`` (30),
``MUSICFS_BENCH_S3STREAM_ORIGIN`` (TOML lines for MusicFS's [[origin]], comma-separated),
``MUSICFS_BENCH_S3STREAM_COMPARE`` (the compared MusicFS's; ``-``: none),
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

from bench import Report, drop_page_cache
from bench.peers import MusicFS, make_album, wait_for_tracks
from bench.workloads import read_file, read_parallel

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


def _settings(spec: str) -> list[str]:
    return [item.strip() for item in spec.split(",") if item.strip()]


def main() -> Report:
    from tests.support.netns import NetNS, S3Server

    repeat = int(os.environ.get("MUSICFS_BENCH_REPEAT", "3"))
    size = int(os.environ.get("MUSICFS_BENCH_S3STREAM_MB", "30")) * 1024 * 1024
    out = os.environ.get("MUSICFS_BENCH_S3STREAM_OUT")
    # S3 origin settings (TOML, comma-separated) of MusicFS and of the MusicFS it is
    # compared with in the same run ("-": none); by default the ranged GETs of before.
    ours_settings = _settings(os.environ.get("MUSICFS_BENCH_S3STREAM_ORIGIN", ""))
    compare = os.environ.get("MUSICFS_BENCH_S3STREAM_COMPARE", "streams = 0")
    work = Path(tempfile.mkdtemp(prefix="musicfs-bench-s3stream-"))
    os.chmod(work, 0o755)
    lib = work / "lib"
    # Tagged MP3s padded with random bytes to ``size`` (distinct sizes: found by size).
    tracks = make_album(lib, repeat, size)
    keys = [str(p.relative_to(lib)) for p in tracks]
    # And an album of shorter tracks read by ``parallel`` readers at once.
    parallel = int(os.environ.get("MUSICFS_BENCH_S3STREAM_PARALLEL", "16"))
    parallel_size = int(os.environ.get("MUSICFS_BENCH_S3STREAM_PARALLEL_MB", "8")) * 1024 * 1024
    album = make_album(lib / "parallel", parallel, parallel_size) if parallel else []
    album_keys = [str(p.relative_to(lib)) for p in album]
    total = len(keys) + len(album_keys)
    sides = {"musicfs": ours_settings}
    if compare != "-":
        sides["musicfs, " + compare] = _settings(compare)
    cold: dict[str, list[float]] = {name: [] for name in [*sides, "streamed GET"]}
    from_cache: dict[str, list[float]] = {name: [] for name in sides}
    gets: dict[str, list[int]] = {name: [] for name in cold}
    together: dict[str, list[float]] = {name: [] for name in cold}
    together_gets: dict[str, list[int]] = {name: [] for name in cold}
    report = Report(
        "s3stream",
        "S3 cold sequential read of one track: MusicFS mount vs one streamed GET",
        setup={"track_mib": size // (1024 * 1024), "repeat": repeat, "settings": sides},
    )
    try:
        with NetNS() as ns:
            s3 = S3Server(ns, work, auth=False).start()
            s3.upload_tree("music", lib)
            origin = {"url": "s3://music", "name": "s3", "endpoint": s3.endpoint}
            peers = {}
            for i, (name, settings) in enumerate(sides.items()):
                peer = MusicFS(f"musicfs-s3-{i}", origin, work, env=s3.env())
                # The [[origin]] table is the config's last: TOML values as written.
                with peer.config.open("a") as config:
                    config.writelines(f"{item}\n" for item in settings)
                with peer.mount(fresh=True) as mounted:  # the first sync: the catalog
                    wait_for_tracks(mounted.path, total)
                peers[name] = peer
            client = s3.client()
            for run, key in enumerate(keys):
                # Every side reads the same object, in an order rotated by run.
                names = list(cold)
                for name in names[run % len(names) :] + names[: run % len(names)]:
                    before = _gets(s3.log, key)
                    if name == "streamed GET":
                        took, n = _streamed_get(client, key)
                    else:
                        took, n, again = _mount_read(peers[name], lib, key, total)
                        from_cache[name].append(n / again / 1e6)
                    assert n == (lib / key).stat().st_size, f"{name}: read {n} bytes of {key}"
                    gets[name].append(_gets(s3.log, key) - before)
                    cold[name].append(n / took / 1e6)
                for name in names[run % len(names) :] + names[: run % len(names)]:
                    if not album:
                        break
                    before = sum(_gets(s3.log, k) for k in album_keys)
                    if name == "streamed GET":
                        mb_s = _streamed_gets(client, album_keys, parallel)
                    else:
                        mb_s = _mount_read_parallel(peers[name], lib, album_keys, total, parallel)
                    together[name].append(mb_s)
                    together_gets[name].append(sum(_gets(s3.log, k) for k in album_keys) - before)
                log.info(
                    "run %d/%d: %s",
                    run + 1,
                    repeat,
                    "; ".join(
                        f"{n} {v[-1]:.1f} MB/s ({gets[n][-1]} GETs)"
                        + (f", {parallel} at once {together[n][-1]:.1f} MB/s" if album else "")
                        for n, v in cold.items()
                    ),
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = cold["streamed GET"]
    for name in sides:
        report.add_runs(
            f"S3: one track read start to end, cold: {name}",
            cold[name],
            "MB/s",
            baseline_samples=base,
        )
        report.add_runs(
            f"S3: the same read again from the chunk cache: {name}",
            from_cache[name],
            "MB/s",
            baseline_samples=base,
        )
        if album:
            report.add_runs(
                f"S3: {parallel} readers at once, cold: {name}",
                together[name],
                "MB/s",
                baseline_samples=together["streamed GET"],
            )
        report.add_runs(
            f"S3: GET requests for that read: {name}", [float(g) for g in gets[name]], "requests"
        )
    ratios = {n: statistics.median(cold[n]) / statistics.median(base) for n in sides}
    report.notes += [
        "Ratios to a single streamed GET of the same object (medians of "
        f"{repeat}; the goal is ≥ 0.5×): " + ", ".join(f"{n} {r:.2f}×" for n, r in ratios.items()),
        f"GETs per read: {gets}.",
        f"Load average at the end: {os.getloadavg()}.",
    ]
    if out:
        from bench import environment

        data = {
            "report": report.to_json(),
            "ratios": ratios,
            "cold_mb_s": cold,
            "from_cache_mb_s": from_cache,
            "gets": gets,
            "parallel_readers": parallel,
            "parallel_track_mib": parallel_size // (1024 * 1024),
            "parallel_mb_s": together,
            "parallel_gets": together_gets,
            "environment": environment(),
            "uptime": os.popen("uptime").read().strip(),
        }
        Path(out).write_text(json.dumps(data, indent=2, default=str) + "\n")
    return report


def _mount_read_parallel(
    peer: MusicFS, lib: Path, keys: list[str], count: int, readers: int
) -> float:
    """MB/s of ``readers`` threads reading the tracks ``keys`` through a fresh mount."""
    with peer.mount(fresh=True) as mounted:
        sizes = {(lib / k).stat().st_size for k in keys}
        paths = [p for p in wait_for_tracks(mounted.path, count) if p.stat().st_size in sizes]
        assert len(paths) == len(keys), f"{len(paths)} of {len(keys)} tracks found by size"
        drop_page_cache()
        return read_parallel(paths, readers).mb_s


def _streamed_gets(client: object, keys: list[str], readers: int) -> float:
    """MB/s of ``readers`` threads each streaming whole objects with one GET."""
    started = time.perf_counter()
    with ThreadPoolExecutor(readers) as pool:
        nbytes = sum(n for _, n in pool.map(lambda k: _streamed_get(client, k), keys))
    return nbytes / (time.perf_counter() - started) / 1e6


def _mount_read(peer: MusicFS, lib: Path, key: str, count: int) -> tuple[float, int, float]:
    """(seconds, bytes) of the track read cold through a fresh mount, and the seconds of
    the same read again from its chunk cache (page cache dropped): MusicFS's own ceiling."""
    with peer.mount(fresh=True) as mounted:
        want = (lib / key).stat().st_size
        path = next(p for p in wait_for_tracks(mounted.path, count) if p.stat().st_size == want)
        drop_page_cache()
        started = time.perf_counter()
        _, n = read_file(path)
        took = time.perf_counter() - started
        drop_page_cache()
        started = time.perf_counter()
        read_file(path)
        return took, n, time.perf_counter() - started
