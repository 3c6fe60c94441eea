"""Layer 2: the served tree on a real mount of a few thousand tracks.

A sync that changes a tenth of the library is published while readers walk the tree:
every folder they list is that folder as it was before the sync or as it is after it,
never a mix (so never a missing track that exists in both). And the daemon's memory
stays within a bound that grows with the library at most linearly, checked at two sizes.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest

from musicfs.catalog.tags import Tags
from musicfs.demo import write_tags
from tests.support.daemon import MountedDaemon, scan, wait_for_files
from tests.support.library import tagged_file

FORMATS = ("flac", "mp3", "ogg")


def make(lib: Path, count: int) -> list[tuple[Path, Tags]]:
    made = []
    for i in range(count):
        album, n = divmod(i, 10)
        tags = Tags(
            title=f"Song {i}", artist=f"Artist {album // 4}", album=f"Album {album}", track=n + 1
        )
        path = lib / f"a{album // 4}" / f"b{album}" / f"{n:02d}.{FORMATS[i % 3]}"
        made.append((tagged_file(path, FORMATS[i % 3], tags), tags))
    return made


def walk(mnt: Path) -> dict[str, tuple[str, ...]]:
    """Folder (relative) -> its sorted listing, for every folder reachable now."""
    out: dict[str, tuple[str, ...]] = {}
    stack = [mnt]
    while stack:
        folder = stack.pop()
        try:
            names = tuple(sorted(os.listdir(folder)))
        except FileNotFoundError:
            continue  # gone in the new tree since its parent was listed
        out[str(folder.relative_to(mnt))] = names
        stack.extend(folder / n for n in names if "." not in n)  # folders have no extension
    return out


def config(tmp_path: Path) -> Path:
    path = tmp_path / "musicfs.toml"
    # One batch holds the whole change: the sync publishes the old tree or the new one.
    path.write_text('[library]\nscan_interval = "1s"\nscan_batch = 1000\n')
    return path


def test_readers_see_each_folder_old_or_new_while_a_sync_renames_a_tenth(tmp_path: Path) -> None:
    lib, state = tmp_path / "lib", tmp_path / "state"
    made = make(lib, 2000)
    scan(lib, state)
    with MountedDaemon(tmp_path / "mnt", [lib], state, config=config(tmp_path)) as d:
        wait_for_files(d.mountpoint, 2000, timeout=60)
        old = walk(d.mountpoint)
        seen: list[dict[str, tuple[str, ...]]] = []
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                seen.append(walk(d.mountpoint))

        readers = [threading.Thread(target=reader) for _ in range(2)]
        for r in readers:
            r.start()
        try:
            time.sleep(0.5)
            # A tenth of the tracks retitled: 200 renames over 20 albums.
            for path, tags in made[::10]:
                write_tags(path, Tags(**{**tags.as_dict(), "title": f"{tags.title} (live)"}))
                os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if sum("(live)" in n for n in _all(d.mountpoint)) == 200:
                    break
                time.sleep(0.2)
            else:
                raise AssertionError("the sync was not published:\n" + d.log())
            time.sleep(0.5)
        finally:
            stop.set()
            for r in readers:
                r.join()
        new = walk(d.mountpoint)
    assert old != new and len(seen) >= 4
    for snapshot in seen:
        for folder, listing in snapshot.items():
            assert listing in (old.get(folder), new.get(folder)), folder


def _all(mnt: Path) -> list[str]:
    return [n for _, _, names in os.walk(mnt) for n in names]


def _peak_mib(d: MountedDaemon) -> float:
    text = Path(f"/proc/{d.pid}/status").read_text()
    m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    assert m
    return int(m.group(1)) / 1024


# The bound checked: the fixed start-up cost, plus at most this much per track. A first
# start builds the search index from every track (measured here: 64 MiB at 500 tracks, 68
# MiB at 3,000 -- under 2 KiB a track); a restart that finds nothing changed reads none
# (57 and 58 MiB, after a walk of the whole mount: flat within the noise).
BASE_MIB = 75
PER_TRACK_KIB = 3
RESTART_BASE_MIB = 65
RESTART_PER_TRACK_KIB = 1


@pytest.mark.parametrize("tracks", [500, 3000])
def test_daemon_memory_is_bounded_by_a_linear_formula(tmp_path: Path, tracks: int) -> None:
    lib, state = tmp_path / "lib", tmp_path / "state"
    make(lib, tracks)
    scan(lib, state)
    with MountedDaemon(tmp_path / "mnt", [lib], state) as d:
        d.wait_for_log("search index:", timeout=60)
        assert len(_all(d.mountpoint)) == tracks
        peak = _peak_mib(d)
    bound = BASE_MIB + tracks * PER_TRACK_KIB / 1024
    assert peak <= bound, f"{tracks} tracks: peak RSS {peak:.0f} MiB > {bound:.0f} MiB"
    # Every later start that finds nothing changed reads no track at all: the index is in
    # line with the published tree.
    with MountedDaemon(tmp_path / "mnt", [lib], state) as d:
        d.wait_for_log("search index: +0 -0", timeout=60)
        assert len(_all(d.mountpoint)) == tracks
        again = _peak_mib(d)
    bound = RESTART_BASE_MIB + tracks * RESTART_PER_TRACK_KIB / 1024
    assert again <= bound, f"{tracks} tracks, restart: peak RSS {again:.0f} MiB > {bound:.0f} MiB"
