"""The walking skeleton on a generated library (issue 2, "Measure").

Against baselines measured in the same run, on the same files:

* scan throughput of ``musicfs scan`` (fresh catalog) vs a bare mutagen loop;
* ``ls -R`` and a full sequential read (``cat`` of every file) through a freshly started
  mount vs the same on the origin folder, page cache dropped before each run;
* the daemon's peak RSS (VmHWM) over all of the above, and what start-up and search cost.

Knobs (environment): ``MUSICFS_BENCH_TRACKS`` (10000), ``MUSICFS_BENCH_LARGE`` (16 of the
tracks are padded to album-length sizes so the read also measures bandwidth, not only
per-file overhead), ``MUSICFS_BENCH_LARGE_MB`` (16), ``MUSICFS_BENCH_DIR`` (where the
generated library is cached between runs, default ``~/.cache/musicfs-bench``),
``MUSICFS_BENCH_DROP_CACHES=0`` (never drop the page cache).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import Report, drop_page_cache, stopwatch
from musicfs.catalog.tags import Tags
from musicfs.demo import FORMATS, fixtures_dir, write_tags
from musicfs.service.mounts import find_mount, is_stale, lazy_unmount

log = logging.getLogger("bench.library")

# Bump when the generated library changes: cached copies of older versions are ignored.
GENERATOR_VERSION = 2
TRACKS_PER_ALBUM = 10
ALBUMS_PER_ARTIST = 4

_WORDS = [
    *("Amber", "Blue", "Cedar", "Dawn", "Ember", "Fjord", "Glass", "Harbour", "Iris"),
    *("Juniper", "Kettle", "Lantern", "Meadow", "Night", "Ocean", "Pine", "Quartz", "River"),
    *("Stone", "Thaw", "Umber", "Velvet", "Willow", "Xenon", "Yarrow", "Zephyr", "Ísland"),
    *("Björk", "Café", "Señor", "Über", "Ōtsuki", "Ærø", "Smörgås", "Żubr", "Łódź"),
]
_GENRES = ("Rock", "Jazz", "Folk", "Electronic", "Classical", "Hip-Hop", "Ambient", "Pop")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _word(n: int) -> str:
    return _WORDS[n % len(_WORDS)]


def plan(i: int) -> tuple[str, str, Tags]:
    """Track ``i`` of the library: (origin path without extension, format, tags). Albums
    of ten, four per artist; every 25th album a compilation, every 10th on two discs."""
    album_no, n = divmod(i, TRACKS_PER_ALBUM)
    artist_no = album_no // ALBUMS_PER_ARTIST
    artist = f"{_word(artist_no)} {_word(artist_no // 7 + 3)} {artist_no:03d}"
    album = f"{_word(album_no * 3 + 1)} {_word(album_no + 11)} {album_no}"
    year = 1960 + album_no % 65
    title = f"{_word(i * 7 + 2)} {_word(i + 5)} {n + 1}"
    fmt = FORMATS[i % len(FORMATS)]
    two_discs = album_no % 10 == 9
    disc, number = (n // 5 + 1, n % 5 + 1) if two_discs else (None, n + 1)
    compilation = album_no % 25 == 24
    tags = Tags(
        title=title,
        artist=f"{_word(i)} Guest {i % 97}" if compilation else artist,
        albumartist=None if compilation else artist,
        album=album,
        track=number,
        disc=disc,
        disctotal=2 if two_discs else None,
        year=year,
        genre=_GENRES[album_no % len(_GENRES)],
        compilation=compilation,
    )
    folder = "Compilations" if compilation else artist
    return f"{folder}/{album} ({year})/{disc or 1}-{number:02d} {title}", fmt, tags


def _make_track(job: tuple[Path, int, int]) -> int:
    dest, i, pad_to = job
    rel, fmt, tags = plan(i)
    if pad_to:
        # FLAC, as large lossless albums are; Ogg/Opus readers choke on trailing bytes.
        fmt = "flac"
    target = dest / f"{rel}.{fmt}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fixtures_dir() / f"tone.{fmt}", target)
    write_tags(target, tags)
    if pad_to:
        # Bytes after the audio: players and tag readers ignore them, reads still move them.
        block = hashlib.sha256(rel.encode()).digest() * 4096
        with target.open("ab") as f:
            while f.tell() < pad_to:
                f.write(block[: pad_to - f.tell()])
    return target.stat().st_size


def library(tracks: int, large: int, large_mb: int) -> tuple[Path, float | None]:
    """The generated library, built once per (version, size) and then reused. Returns its
    folder and how long generating took (None when it came from the cache)."""
    base = Path(os.environ.get("MUSICFS_BENCH_DIR") or Path.home() / ".cache" / "musicfs-bench")
    dest = base / f"library-v{GENERATOR_VERSION}-{tracks}-{large}x{large_mb}M"
    complete = dest.with_name(dest.name + ".complete")
    if complete.exists() and dest.is_dir():
        return dest, None
    shutil.rmtree(dest, ignore_errors=True)
    building = dest.with_name(dest.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    every = tracks // large if large else 0
    jobs = [
        (building, i, large_mb << 20 if every and i % every == every // 2 else 0)
        for i in range(tracks)
    ]
    log.info("generating %d tracks under %s (cached for later runs)", tracks, dest)
    with stopwatch() as took, multiprocessing.Pool() as pool:
        for done, _ in enumerate(pool.imap_unordered(_make_track, jobs, chunksize=64), 1):
            if done % 2000 == 0:
                log.info("  %d/%d", done, tracks)
    (building / "cover.jpg").write_bytes(b"not audio: every library has some")
    building.rename(dest)
    complete.write_text(f"{tracks}\n")
    return dest, took[0]


def audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".jpg")


BARE_MUTAGEN_LOOP = """
import os, sys, mutagen
n = 0
for folder, _, names in os.walk(sys.argv[1]):
    for name in names:
        if name.endswith(('.flac', '.mp3', '.ogg', '.opus', '.m4a', '.wav', '.aiff')):
            try:
                audio = mutagen.File(os.path.join(folder, name))
            except Exception:
                continue
            n += audio is not None and audio.tags is not None
print(n)
"""


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]}... exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc.stdout


def _timed_cold(cmd: list[str], cold: bool) -> tuple[float, str]:
    if cold:
        drop_page_cache()
    with stopwatch() as took:
        out = _run(cmd)
    return took[0], out


def _musicfs(*args: str) -> list[str]:
    return [sys.executable, "-m", "musicfs", *args]


class Daemon:
    """A real ``musicfs mount`` process, as a user starts it."""

    def __init__(self, lib: Path, state: Path, cache: Path, mnt: Path, log_path: Path):
        mnt.mkdir(parents=True, exist_ok=True)
        self.mnt = mnt
        self.log_path = log_path
        self._log = log_path.open("wb")
        cmd = _musicfs(
            "mount", "--origin", str(lib), "--state-dir", str(state), "--cache-dir", str(cache)
        )
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([*cmd, str(mnt)], stdout=self._log, stderr=subprocess.STDOUT)

    def wait_for(self, what: str, timeout: float = 600) -> float:
        """Seconds from the start of the process until ``what`` appears in the log ('mount'
        waits for the mount)."""
        while time.perf_counter() - self.started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            if find_mount(self.mnt) is not None if what == "mount" else what in self.log():
                return time.perf_counter() - self.started
            time.sleep(0.02)
        raise RuntimeError(f"{what!r} not seen within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self, key: str) -> int:
        """A /proc/<pid>/status figure in KiB (VmHWM: peak resident set)."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
        assert m, text
        return int(m.group(1))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if find_mount(self.mnt) is not None or is_stale(self.mnt):
            lazy_unmount(self.mnt)
        self._log.close()
        return self.proc.returncode


def main() -> Report:
    tracks = _env_int("MUSICFS_BENCH_TRACKS", 10_000)
    large = min(tracks, _env_int("MUSICFS_BENCH_LARGE", 16))
    large_mb = _env_int("MUSICFS_BENCH_LARGE_MB", 16)
    loadavg_start = os.getloadavg()
    report = Report("library", f"Local folder, {tracks:,} generated tracks")
    lib, generated_in = library(tracks, large, large_mb)
    files = audio_files(lib)
    total_bytes = sum(p.stat().st_size for p in files)
    cold = drop_page_cache()
    report.setup = {
        "library": str(lib),
        "tracks": len(files),
        "bytes": total_bytes,
        "large_tracks": large,
        "large_track_bytes": large_mb << 20,
        "generated_in_s": generated_in,
        "page_cache_dropped_before_each_cold_run": cold,
    }
    work = Path(tempfile.mkdtemp(prefix="musicfs-bench-"))
    try:
        _measure(report, lib, work, files, cold)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.environment = {"loadavg_at_start": loadavg_start, "loadavg_at_end": os.getloadavg()}
    mb = total_bytes / 1e6
    report.notes = [
        f"{len(files):,} files, {mb:,.0f} MB: {len(files) - large:,} small tagged fixtures "
        f"(1-22 KB) in 7 formats and {large} padded to {large_mb} MiB.",
        "Page cache, dentries and inodes dropped (`echo 3 > /proc/sys/vm/drop_caches`) before "
        "every scan, `ls -R` and read run; each figure is the median of "
        f"{_env_int('MUSICFS_BENCH_REPEAT', 3)} alternating runs (all samples in the JSON)."
        if cold
        else "Page cache NOT dropped (not root, or MUSICFS_BENCH_DROP_CACHES=0): warm runs.",
        "Ratio: how many times slower MusicFS is than the baseline (1.00× = as fast).",
    ]
    return report


def _pair(
    report: Report,
    metric: str,
    ours: Callable[[int], list[str]],
    theirs: Callable[[int], list[str]],
    cold: bool,
) -> tuple[float, float]:
    """Median seconds of ``repeat`` alternating runs of MusicFS and its baseline; every
    sample is kept in the report."""
    mine: list[float] = []
    base: list[float] = []
    for k in range(_env_int("MUSICFS_BENCH_REPEAT", 3)):
        mine.append(_timed_cold(ours(k), cold)[0])
        base.append(_timed_cold(theirs(k), cold)[0])
    report.setup.setdefault("samples_s", {})[metric] = {"musicfs": mine, "baseline": base}
    log.info("%s: musicfs %s, baseline %s", metric, _secs(mine), _secs(base))
    return statistics.median(mine), statistics.median(base)


def _secs(samples: list[float]) -> str:
    return "/".join(f"{x:.2f}" for x in samples) + " s"


def _measure(report: Report, lib: Path, work: Path, files: list[Path], cold: bool) -> None:
    state, cache, mnt = work / "state", work / "cache", work / "mnt"
    count = len(files)

    # -- scan ----------------------------------------------------------------------------
    bare = [sys.executable, "-c", BARE_MUTAGEN_LOOP, str(lib)]
    tagged = int(_run(bare))
    if tagged != count:
        raise RuntimeError(f"only {tagged} of {count} generated files have readable tags")
    metric = "scan throughput (fresh catalog)"
    scan_s, bare_s = _pair(
        report,
        metric,
        lambda k: _musicfs("scan", "--origin", str(lib), "--state-dir", str(work / f"scan{k}")),
        lambda k: bare,
        cold,
    )
    report.add(
        metric,
        count / scan_s,
        "tracks/s",
        baseline=count / bare_s,
        baseline_name="bare mutagen loop",
        higher_is_better=True,
        note=f"{scan_s:.2f} s vs {bare_s:.2f} s, whole processes",
    )
    shutil.copytree(work / "scan0", state)

    # -- mount ---------------------------------------------------------------------------
    daemon = Daemon(lib, state, cache, mnt, work / "daemon.log")
    try:
        mount_s = daemon.wait_for("mount")
        ready_s = daemon.wait_for("search index:")
        m = re.search(r"search index: \+(\d+) -\d+, \d+ tracks, ([\d.]+)s", daemon.log())
        report.add(
            "start-up: mounted",
            mount_s,
            "s",
            note=f"catalog already scanned; first re-sync and search index done at "
            f"{ready_s:.2f} s" + (f" (indexing {m[1]} tracks: {m[2]} s)" if m else ""),
        )
        seen = int(_run(["sh", "-c", f"find {_sh(mnt)} -type f | wc -l"]))
        if seen != count:
            raise RuntimeError(f"the mount shows {seen} files, the origin has {count}")

        metric = "`ls -R`"
        mount_s, origin_s = _pair(
            report, metric, lambda k: ["ls", "-R", str(mnt)], lambda k: ["ls", "-R", str(lib)], cold
        )
        report.add(
            metric,
            mount_s,
            "s",
            baseline=origin_s,
            baseline_name="origin folder",
            note=f"{count:,} files in {len({p.parent for p in files}):,} folders",
        )

        sizes = {p: p.stat().st_size for p in files}
        small = [p for p in files if sizes[p] < 1 << 20]
        large = [p for p in files if sizes[p] > 1 << 20]
        for what, find_args, chosen in (
            ("every file", "", files),
            ("small files only", "-size -1024k", small),
            ("large files only", "-size +1024k", large),
        ):
            if not chosen:
                continue
            mb = sum(sizes[p] for p in chosen) / 1e6
            cmd = "find {} -type f " + find_args + " -print0 | xargs -0 cat > /dev/null"
            metric = f"read {what} (`cat`)"
            mount_s, origin_s = _pair(
                report,
                metric,
                lambda k, cmd=cmd: ["sh", "-c", cmd.format(_sh(mnt))],  # type: ignore[misc]
                lambda k, cmd=cmd: ["sh", "-c", cmd.format(_sh(lib))],  # type: ignore[misc]
                cold,
            )
            report.add(
                metric,
                mb / mount_s,
                "MB/s",
                baseline=mb / origin_s,
                baseline_name="origin folder",
                higher_is_better=True,
                note=f"{len(chosen):,} files, {mb:,.0f} MB: {mount_s:.2f} s vs {origin_s:.2f} s",
            )

        with stopwatch() as took:
            out = _run(_musicfs("search", "--state-dir", str(state), "--limit", "10000", "dawn"))
        report.add(
            "`musicfs search dawn` beside the daemon",
            took[0],
            "s",
            note=f"{len(out.splitlines()):,} hits; whole process (Python start-up included)",
        )
        report.add(
            "daemon peak RSS (VmHWM)",
            daemon.status("VmHWM") / 1024,
            "MiB",
            note="after start-up sync, search index, the `ls -R` and read runs",
        )
    finally:
        rc = daemon.stop()
        if rc != 0:
            log.warning("daemon exited %s:\n%s", rc, daemon.log()[-4000:])


def _sh(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    print(main().markdown())
