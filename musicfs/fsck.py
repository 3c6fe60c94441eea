"""``musicfs fsck [--repair]``: the thorough checks start-up skips for speed.

* catalog: start-up runs SQLite's ``quick_check``; fsck runs the full ``integrity_check``
  (reported, never repaired here);
* chunk cache: every chunk is read and verified against its hash, the index against the
  files (records of missing files, files the index does not know, records that fail their
  checksum, mappings that point nowhere, temp files left by a crash). Without
  ``--repair`` nothing is changed and the index is opened read-only, so it is safe next
  to a running daemon. ``--repair`` needs the cache to itself: it runs the start-up repair
  (rebuilding a broken index) and quarantines every chunk that fails verification.

Exit status 0 when nothing is wrong or everything found was repaired, 1 otherwise.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import lmdb

from musicfs.cache.disk import CacheDisk
from musicfs.cache.index import ChunkIndex, IndexUnusable, check_structure
from musicfs.cache.store import ChunkStore
from musicfs.catalog.integrity import check_catalog
from musicfs.config import Settings
from musicfs.locks import is_held
from musicfs.resources import describe

MAX_LINES = 50


@dataclass
class CacheCheck:
    root: Path
    chunks: int = 0
    bytes: int = 0
    ok: int = 0
    problems: list[str] = field(default_factory=list)  # found and left as they are
    repaired: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"cache {self.root}: {self.chunks} chunks ({self.bytes / 2**20:.1f} MiB), "
            f"{self.ok} verified ok, {len(self.problems)} problems"
        )
        if self.repaired:
            text += f", {len(self.repaired)} repaired"
        return text


def fsck_catalog(settings: Settings) -> list[str]:
    return [f"catalog {settings.catalog_path}: {p}" for p in check_catalog(settings.catalog_path)]


def check_cache(settings: Settings, *, repair: bool = False) -> CacheCheck:
    root = settings.cache_dir
    result = CacheCheck(root)
    if not root.exists():
        result.notes.append(f"cache {root}: does not exist yet; nothing to check")
        return result
    if not root.is_dir():
        result.problems.append(f"cache {root}: not a directory (the daemon runs in passthrough)")
        return result
    if repair:
        cache_settings = settings.cache
        stored = stored_chunk_size(CacheDisk(root))
        if stored is not None and stored != cache_settings.chunk_size:
            # A config change still waiting for a restart must not empty the index: the
            # daemon decides that at its next start.
            result.notes.append(
                f"cache {root}: written with {stored}-byte chunks (the config says "
                f"{cache_settings.chunk_size}, effective at the next daemon start); "
                f"repairing with {stored}"
            )
            cache_settings = dataclasses.replace(cache_settings, chunk_size=stored)
        _repair(ChunkStore.from_settings(root, cache_settings), result)
    else:
        _check(CacheDisk(root), result)
    return result


def stored_chunk_size(disk: CacheDisk) -> int | None:
    """The chunk size the cache's index says its chunks were written with, if it can say."""
    if check_structure(disk.index_path) is not None or not (disk.index_path / "data.mdb").exists():
        return None
    try:
        index = ChunkIndex(disk.index_path, map_size=2**20, readonly=True)
    except (IndexUnusable, lmdb.Error):
        return None
    try:
        raw = index.get_meta(b"chunk_size")
    finally:
        index.close()
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


def daemon_using(settings: Settings) -> str | None:
    """The pid (as its lock file says) of a daemon using this cache or state dir."""
    for lock in (settings.cache_dir / "lock", settings.state_dir / "musicfs.lock"):
        if is_held(lock):
            try:
                return lock.read_text().strip() or "?"
            except OSError:
                return "?"
    return None


def _repair(store: ChunkStore, result: CacheCheck) -> None:
    report = store.open()
    if report is None:
        result.problems.append(f"cache {store.root}: cannot repair: {store.reason}")
        return
    try:
        if report.index_rebuilt:
            result.repaired.append(f"index rebuilt from the chunk files ({report.index_problem})")
        if report.temp_removed:
            result.repaired.append(f"{report.temp_removed} temp files removed")
        result.repaired.extend(report.details)
        for digest, size in store.stored_chunks():
            result.chunks += 1
            result.bytes += size
            why = store.disk.check_chunk(digest, size)
            if why is None:
                result.ok += 1
                continue
            store.reject(digest, why, "fsck", then="a read will fetch it again")
            result.repaired.append(f"chunk {digest.hex()}: {why}; quarantined")
    finally:
        store.close()


def _check(disk: CacheDisk, result: CacheCheck) -> None:
    """Read-only: no lock, nothing created or changed."""
    in_use = is_held(disk.root / "lock")
    if in_use:
        result.notes.append(
            f"cache {disk.root}: a running MusicFS uses it; checking read-only "
            "(chunks it writes meanwhile may show up as unknown files)"
        )
    blobs: dict[bytes, int] = {}
    problem = check_structure(disk.index_path)
    if problem is not None:
        result.problems.append(f"index {disk.index_path}: {problem}")
    elif (disk.index_path / "data.mdb").exists():
        try:
            index = ChunkIndex(disk.index_path, map_size=2**20, readonly=True)
        except (IndexUnusable, lmdb.Error) as exc:
            result.problems.append(f"index {disk.index_path}: {describe(exc)}")
        else:
            try:
                _check_index(disk, index, blobs, result)
            finally:
                index.close()
    _check_files(disk, blobs, result, in_use)


def _check_index(
    disk: CacheDisk, index: ChunkIndex, blobs: dict[bytes, int], result: CacheCheck
) -> None:
    good, bad = index.all_blobs()
    for digest in bad:
        result.problems.append(f"index record for chunk {digest.hex()} fails its checksum")
    for digest, info in good.items():
        blobs[digest] = info.size
        result.chunks += 1
        result.bytes += info.size
        why = disk.check_chunk(digest, info.size)
        if why is None:
            result.ok += 1
        else:
            result.problems.append(f"chunk {digest.hex()} ({disk.chunk_path(digest)}): {why}")
    for key, target in index.all_maps():
        if target is None:
            result.problems.append(f"index mapping {key.hex()} fails its checksum")
        elif target not in blobs:
            result.problems.append(f"index mapping {key.hex()} points at unknown chunk")


def _check_files(
    disk: CacheDisk, blobs: dict[bytes, int], result: CacheCheck, in_use: bool
) -> None:
    if disk.chunks_dir.is_dir():
        for fan in sorted(disk.chunks_dir.iterdir()):
            entries = sorted(fan.iterdir()) if fan.is_dir() and not fan.is_symlink() else [fan]
            for path in entries:
                try:
                    known = bytes.fromhex(path.name) in blobs
                except ValueError:
                    known = False
                if not known and not in_use:
                    result.problems.append(
                        f"{path}: not in the index (start-up or --repair re-adopts or deletes it)"
                    )
    if disk.tmp_dir.is_dir() and not in_use:
        for path in disk.tmp_dir.iterdir():
            result.problems.append(f"{path}: temp file left by a crash")


EXIT_IN_USE = 2


def run_fsck(settings: Settings, *, repair: bool = False) -> int:
    holder = daemon_using(settings) if repair else None
    if holder is not None:
        print(
            f"musicfs: the daemon pid {holder} is using this cache ({settings.cache_dir}); "
            "stop it or run fsck without --repair",
            file=sys.stderr,
        )
        return EXIT_IN_USE
    problems = fsck_catalog(settings)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"catalog {settings.catalog_path}: ok")
    cache = check_cache(settings, repair=repair)
    for note in cache.notes:
        print(note)
    for line in cache.repaired[:MAX_LINES]:
        print(f"repaired: {line}")
    for line in cache.problems[:MAX_LINES]:
        print(f"problem: {line}", file=sys.stderr)
    hidden = max(0, len(cache.problems) - MAX_LINES) + max(0, len(cache.repaired) - MAX_LINES)
    if hidden:
        print(f"... and {hidden} more")
    print(cache.summary())
    if cache.problems and not repair:
        print("run `musicfs fsck --repair` with the daemon stopped to repair the cache")
    return 1 if problems or cache.problems else 0
