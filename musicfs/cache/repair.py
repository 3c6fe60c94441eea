"""Start-up repair: before the store serves anything, make the index and the chunk files
agree -- cheaply (stats, no hashing) for what the index knows, thoroughly for the rest.

* a damaged or unreadable LMDB environment is moved aside and rebuilt from the chunk
  files (never a fatal error); a changed ``chunk_size`` clears its mappings;
* temp files (a crash mid-write) are swept;
* index records whose file is missing are dropped, files of the wrong size or kind are
  quarantined;
* chunk files the index does not know are re-adopted if their header and hash verify,
  else deleted; so is anything else found in the chunk folders;
* mappings that point at no known chunk are dropped.

``musicfs fsck --repair`` runs the same repair (through ``ChunkStore.open``).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import lmdb

from musicfs.cache.chunkfile import HEADER_SIZE, ChunkHeader, adoptable
from musicfs.cache.disk import CacheDisk, is_hex, remove_any
from musicfs.cache.index import HASH_LEN, BlobInfo, ChunkIndex, IndexUnusable, check_structure
from musicfs.cache.index import move_aside as move_index_aside
from musicfs.resources import describe

log = logging.getLogger(__name__)

# One log line per problem, but a disaster does not get to flood the log.
_LOGGED_DETAILS = 20


@dataclass
class StartupReport:
    """What the start-up repair found and did."""

    index_rebuilt: bool = False
    index_problem: str | None = None
    temp_removed: int = 0
    missing_dropped: int = 0
    bad_records: int = 0
    adopted: int = 0
    deleted: int = 0
    quarantined: int = 0
    chunks: int = 0
    bytes: int = 0
    details: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        if len(self.details) < _LOGGED_DETAILS:
            log.warning("cache: %s", message)
        self.details.append(message)

    def repairs(self) -> int:
        return (
            self.temp_removed
            + self.missing_dropped
            + self.bad_records
            + self.adopted
            + self.deleted
            + self.quarantined
            + int(self.index_rebuilt)
        )

    def summary(self) -> str:
        parts = [f"{self.chunks} chunks, {self.bytes / 2**20:.1f} MiB"]
        if self.index_rebuilt:
            parts.append(f"index rebuilt ({self.index_problem})")
        for name in ("temp_removed", "missing_dropped", "bad_records", "adopted", "deleted"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name.replace('_', ' ')} {value}")
        if self.quarantined:
            parts.append(f"quarantined {self.quarantined}")
        return ", ".join(parts)


def open_index(
    disk: CacheDisk, *, map_size: int, chunk_size: int, report: StartupReport
) -> ChunkIndex:
    """The index, checked in a child process first; a broken one is moved aside and a new
    one created (the reconcile pass then re-adopts the chunk files into it)."""
    problem = check_structure(disk.index_path)
    if problem is None:
        try:
            return _open_checked(disk, map_size, chunk_size, report)
        except (IndexUnusable, lmdb.Error) as exc:
            problem = str(exc)
    move_index_aside(disk.index_path, problem)
    report.index_rebuilt = True
    report.index_problem = problem
    return _open_checked(disk, map_size, chunk_size, report)


def _open_checked(
    disk: CacheDisk, map_size: int, chunk_size: int, report: StartupReport
) -> ChunkIndex:
    index = ChunkIndex(disk.index_path, map_size=map_size)
    try:
        _check_meta(index, chunk_size, report)
    except BaseException:
        index.close()
        raise
    return index


def _check_meta(index: ChunkIndex, chunk_size: int, report: StartupReport) -> None:
    want = str(chunk_size).encode()
    have = index.get_meta(b"chunk_size")
    if have is not None and have != want:
        # Chunk numbers mean other byte ranges now: forget every mapping. Files whose
        # header still fits the new size are re-adopted by the reconcile pass.
        log.warning(
            "cache: chunk size changed from %s to %s; index cleared",
            have.decode(),
            want.decode(),
        )
        index.clear()
        report.index_rebuilt = True
        report.index_problem = "chunk size changed"
    if have != want:
        index.set_meta(b"chunk_size", want)


def sweep_temp(disk: CacheDisk, report: StartupReport) -> None:
    for entry in os.scandir(disk.tmp_dir):
        remove_any(Path(entry.path))
        report.temp_removed += 1
    if report.temp_removed:
        log.info("cache: removed %d temp files left by a crash", report.temp_removed)


def reconcile(
    disk: CacheDisk, index: ChunkIndex, chunk_size: int, report: StartupReport
) -> tuple[dict[bytes, BlobInfo], set[bytes]]:
    """Make the index and the chunk files agree. Returns the index's blob records and the
    hashes whose files are in place (the store's account starts from these)."""
    blobs, bad = index.all_blobs()
    if bad:
        report.bad_records += len(bad)
        report.note(f"{len(bad)} index records failed their checksum; dropped")
        index.drop_blobs(bad)
    gone: list[bytes] = []
    known: dict[bytes, int] = {}
    for digest, info in blobs.items():
        path = disk.chunk_path(digest)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            report.missing_dropped += 1
            report.note(
                f"chunk {digest.hex()[:16]} is in the index but its file is missing; dropped"
            )
            gone.append(digest)
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size != HEADER_SIZE + info.size:
            what = "not a regular file" if not stat.S_ISREG(st.st_mode) else "wrong size"
            disk.quarantine(path)
            report.quarantined += 1
            report.note(f"chunk {digest.hex()[:16]} {path}: {what}; quarantined")
            gone.append(digest)
            continue
        known[digest] = info.size
    if gone:
        index.drop_blobs(gone)
    adopt = _scan_files(disk, chunk_size, report, known)
    if adopt:
        index.add_many(adopt, int(time.time()))
        for _, _, digest, size in adopt:
            known[digest] = size
    # Mappings that point at nothing (or fail their checksum) are dropped.
    dangling = [key for key, digest in index.all_maps() if digest not in known]
    if dangling:
        report.bad_records += len(dangling)
        index.drop_maps(dangling)
    blobs, _ = index.all_blobs()
    return blobs, set(known)


def _scan_files(
    disk: CacheDisk, chunk_size: int, report: StartupReport, known: dict[bytes, int]
) -> list[tuple[bytes, int, bytes, int]]:
    """Walk the chunk folders; re-adopt verified files the index does not know."""
    adopt: list[tuple[bytes, int, bytes, int]] = []
    for fan in os.scandir(disk.chunks_dir):
        fan_path = Path(fan.path)
        if not (fan.is_dir(follow_symlinks=False) and is_hex(fan.name, 2)):
            remove_any(fan_path)
            report.deleted += 1
            report.note(f"{fan_path}: unexpected entry in the chunk folder; deleted")
            continue
        for entry in os.scandir(fan_path):
            path = Path(entry.path)
            name = entry.name
            if not (is_hex(name, HASH_LEN * 2) and name.startswith(fan.name)):
                remove_any(path)
                report.deleted += 1
                report.note(f"{path}: not a chunk file name; deleted")
                continue
            digest = bytes.fromhex(name)
            if digest in known:
                continue
            why = _adoptable(disk, path, digest, chunk_size)
            if isinstance(why, str):
                remove_any(path)
                report.deleted += 1
                report.note(f"{path}: unknown to the index and {why}; deleted")
                continue
            adopt.append((why.version, why.chunk_no(chunk_size), digest, why.length))
            known[digest] = why.length
            report.adopted += 1
    if report.adopted:
        log.info("cache: re-adopted %d verified chunk files", report.adopted)
    return adopt


def _adoptable(disk: CacheDisk, path: Path, digest: bytes, chunk_size: int) -> ChunkHeader | str:
    try:
        raw = disk.read_file(path, HEADER_SIZE + chunk_size + 1)
    except OSError as exc:
        return f"unreadable ({describe(exc)})"
    return adoptable(raw, digest, chunk_size)
