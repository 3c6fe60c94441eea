"""Layer 1: the chunk store -- atomic writes, start-up repair, bad chunk files, a broken
index, size limits and eviction, full / read-only / failing cache directories."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import sys
from pathlib import Path

import lmdb
import pytest

from musicfs import failpoints
from musicfs.cache.chunkfile import HEADER_SIZE, chunk_hash
from musicfs.cache.disk import CacheDisk
from musicfs.cache.index import IndexUnusable, map_key
from musicfs.cache.modes import CacheMode
from musicfs.cache.readonly import open_read_only
from musicfs.cache.store import ChunkStore, PutResult, Rejected
from musicfs.failpoints import FailpointPanic
from tests.support.faulty_store import FaultyStore, noise

CS = 16 * 1024
V1 = b"v" * 16
V2 = b"w" * 16


def make_store(root: Path, **kw: int) -> FaultyStore:
    opts = {"chunk_size": CS, "max_size": 64 * CS, "min_free": 0}
    opts.update(kw)
    store = FaultyStore(root, **opts)
    assert store.open() is not None, store.reason
    return store


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def store(root: Path):  # type: ignore[no-untyped-def]
    s = make_store(root)
    yield s
    s.close()


def reopen(store: ChunkStore, **kw: int) -> FaultyStore:
    """Close like a crash would (no flush) and open again: the start-up repair runs."""
    store.close(flush=False)
    return make_store(store.root, **kw)


def chunk(i: int, size: int = CS) -> bytes:
    return noise(size, f"chunk{i}")


def files(root: Path, sub: str) -> list[Path]:
    return [p for p in (root / sub).rglob("*") if p.is_file() or p.is_symlink()]


# -- the happy path --------------------------------------------------------------------


def test_put_then_get_returns_the_bytes_from_a_hash_named_file(store: FaultyStore) -> None:
    data = chunk(1)
    assert store.put(V1, 0, data) is PutResult.STORED
    assert store.get(V1, 0, len(data)) == data
    digest = chunk_hash(data)
    path = store.chunk_path(digest)
    assert path.parent.name == digest.hex()[:2] and path.name == digest.hex()
    assert path.stat().st_size == HEADER_SIZE + len(data)
    assert files(store.root, "tmp") == []
    assert store.get(V1, 1, CS) is None
    assert store.status()["used_bytes"] == len(data) and store.status()["mode"] == CacheMode.NORMAL


def test_same_bytes_in_two_versions_are_stored_once(store: FaultyStore) -> None:
    data = chunk(1)
    store.put(V1, 0, data)
    assert store.put(V2, 3, data) is PutResult.EXISTS
    assert store.get(V2, 3, len(data)) == data
    assert len(files(store.root, "chunks")) == 1
    store.evict(0)
    assert store.get(V1, 0, len(data)) is None and store.get(V2, 3, len(data)) is None


def test_tail_chunk_length_is_checked(store: FaultyStore) -> None:
    store.put(V1, 2, chunk(2, 100))
    assert store.get(V1, 2, 100) == chunk(2, 100)
    # A reader expecting another length (another chunk size, a changed file) gets no data.
    assert isinstance(store.get(V1, 2, 200), Rejected)


# -- crashes on the write path -----------------------------------------------------------

WRITE_PATH = [
    ("cas.put.before_write", False),
    ("cas.put.after_write", False),
    ("cas.put.after_fsync", False),
    ("cas.put.after_rename", True),
    ("cas.put.after_dir_fsync", True),
    ("cas.put.before_commit", True),
    ("cas.index.before_commit", True),
    ("cas.index.after_commit", True),
    ("cas.put.after_commit", True),
]


@pytest.mark.parametrize(("point", "file_survives"), WRITE_PATH)
def test_crash_at_each_write_step_leaves_a_consistent_store(
    store: FaultyStore, point: str, file_survives: bool
) -> None:
    store.put(V1, 0, chunk(0))
    failpoints.set(point, "panic")
    with pytest.raises(FailpointPanic):
        store.put(V1, 1, chunk(1))
    failpoints.clear()
    again = reopen(store)
    try:
        assert files(again.root, "tmp") == []
        assert again.get(V1, 0, CS) == chunk(0)
        # After the rename the file is whole: the start-up repair re-adopts it from its
        # verified header; before it, the chunk is simply not cached.
        assert again.get(V1, 1, CS) == (chunk(1) if file_survives else None)
        assert again.status()["chunks"] == (2 if file_survives else 1)
    finally:
        again.close()


def test_crash_between_unlink_and_index_commit_of_an_eviction(store: FaultyStore) -> None:
    for i in range(4):
        store.put(V1, i, chunk(i))
    failpoints.set("cas.evict.after_unlink", "panic")
    # Unlike a real crash, the in-process panic still runs the eviction's commit; make
    # that commit die too, as the process would have.
    failpoints.set("cas.index.before_commit", "panic")
    with pytest.raises(FailpointPanic):
        store.evict(0)
    failpoints.clear()
    again = reopen(store)
    try:
        report_chunks = again.status()["chunks"]
        assert report_chunks == 3  # the unlinked chunk's records were dropped at start-up
        assert again.get(V1, 0, CS) is None
        assert [again.get(V1, i, CS) for i in (1, 2, 3)] == [chunk(1), chunk(2), chunk(3)]
    finally:
        again.close()


def test_start_up_sweeps_temp_files_and_drops_records_of_missing_files(
    store: FaultyStore, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(3):
        store.put(V1, i, chunk(i))
    (store.disk.tmp_dir / "123.leftover").write_bytes(b"half a chunk")
    store.chunk_path(chunk_hash(chunk(1))).unlink()
    with caplog.at_level(logging.INFO):
        store.close(flush=False)
        again = FaultyStore(store.root, chunk_size=CS, max_size=64 * CS, min_free=0)
        report = again.open()
    try:
        assert report is not None
        assert report.temp_removed == 1 and report.missing_dropped == 1
        assert files(again.root, "tmp") == []
        assert again.get(V1, 1, CS) is None
        assert again.get(V1, 2, CS) == chunk(2)
        assert "in the index but its file is missing" in caplog.text
    finally:
        again.close()


def test_unknown_files_are_readopted_if_they_verify_else_deleted(store: FaultyStore) -> None:
    store.put(V1, 0, chunk(0))
    good = store.chunk_path(chunk_hash(chunk(0))).read_bytes()
    store.close(flush=False)
    # Lose the index entirely: the header in each file is enough to rebuild it.
    import shutil

    shutil.rmtree(store.disk.index_path)
    # A stranger: right name shape, wrong content.
    stranger = store.chunk_path(chunk_hash(b"x"))
    stranger.parent.mkdir(exist_ok=True)
    stranger.write_bytes(good)
    (store.disk.chunks_dir / "ab" / "notachunk").parent.mkdir(exist_ok=True)
    (store.disk.chunks_dir / "ab" / "notachunk").write_bytes(b"?")
    (store.disk.chunks_dir / "stray-file").write_bytes(b"?")
    again = make_store(store.root)
    try:
        assert again.get(V1, 0, CS) == chunk(0)
        assert not stranger.exists()
        assert not (store.disk.chunks_dir / "ab" / "notachunk").exists()
        assert not (store.disk.chunks_dir / "stray-file").exists()
        assert again.status()["chunks"] == 1
    finally:
        again.close()


# -- bad chunk files ---------------------------------------------------------------------


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: HEADER_SIZE + 10])


def _zero_fill(p: Path) -> None:
    p.write_bytes(bytes(p.stat().st_size))


def _flip_payload_bit(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[HEADER_SIZE + 1234] ^= 0x10
    p.write_bytes(bytes(raw))


def _flip_header_bit(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[30] ^= 0x01
    p.write_bytes(bytes(raw))


def _directory(p: Path) -> None:
    p.unlink()
    p.mkdir()
    (p / "inside").write_bytes(b"x")


def _symlink_to_a_valid_copy(p: Path) -> None:
    copy = p.with_name("copy-elsewhere")
    os.rename(p, copy)
    p.symlink_to(copy)


def _empty(p: Path) -> None:
    p.write_bytes(b"")


CORRUPTIONS = {
    "truncated": _truncate,
    "zero-filled": _zero_fill,
    "bit-flipped payload": _flip_payload_bit,
    "bit-flipped header": _flip_header_bit,
    "replaced by a directory": _directory,
    "replaced by a symlink": _symlink_to_a_valid_copy,
    "empty": _empty,
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_bad_chunk_file_is_rejected_quarantined_and_forgotten(
    store: FaultyStore, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    store.put(V1, 0, chunk(0))
    path = store.chunk_path(chunk_hash(chunk(0)))
    CORRUPTIONS[kind](path)
    with caplog.at_level(logging.WARNING):
        got = store.get(V1, 0, CS, label="a/b.flac")
    assert isinstance(got, Rejected)
    assert "'a/b.flac' chunk 0" in caplog.text and "corrupt" in caplog.text
    assert not path.exists() and not path.is_symlink()
    assert len(list(store.disk.quarantine_dir.iterdir())) == 1
    assert store.get(V1, 0, CS) is None  # forgotten: the next read refetches
    assert store.status()["chunks"] == 0 and store.used == 0
    # ...and a refetch stores it again
    assert store.put(V1, 0, chunk(0)) is PutResult.STORED
    assert store.get(V1, 0, CS) == chunk(0)


@pytest.mark.parametrize(
    "kind", ["truncated", "replaced by a directory", "replaced by a symlink", "empty"]
)
def test_start_up_repair_catches_bad_chunk_files_without_hashing(
    store: FaultyStore, kind: str
) -> None:
    store.put(V1, 0, chunk(0))
    store.put(V1, 1, chunk(1))
    CORRUPTIONS[kind](store.chunk_path(chunk_hash(chunk(0))))
    store.close(flush=False)
    again = FaultyStore(store.root, chunk_size=CS, max_size=64 * CS, min_free=0)
    report = again.open()
    try:
        assert report is not None and report.quarantined == 1
        assert again.get(V1, 0, CS) is None
        assert again.get(V1, 1, CS) == chunk(1)
    finally:
        again.close()


def test_quarantine_keeps_only_the_newest_few(store: FaultyStore) -> None:
    for i in range(5):
        store.put(V1, i, chunk(i))
        _flip_payload_bit(store.chunk_path(chunk_hash(chunk(i))))
        assert isinstance(store.get(V1, i, CS), Rejected)
    assert len(list(store.disk.quarantine_dir.iterdir())) == store.disk.quarantine_keep


def test_read_error_on_a_chunk_file_is_treated_as_corrupt(store: FaultyStore) -> None:
    store.put(V1, 0, chunk(0))
    store.fail("read", errno.EIO, times=1)
    assert isinstance(store.get(V1, 0, CS), Rejected)
    assert store.get(V1, 0, CS) is None


# -- a broken index ----------------------------------------------------------------------


def _garbage(p: Path) -> None:
    p.write_bytes(os.urandom(p.stat().st_size))


def _truncate_mdb(p: Path) -> None:
    # A data.mdb shorter than its meta page says makes LMDB fault (SIGBUS) on access.
    p.write_bytes(p.read_bytes()[: 3 * 4096])


def _zero_pages(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[2 * 4096 :] = bytes(len(raw) - 2 * 4096)
    p.write_bytes(bytes(raw))


def _empty_mdb(p: Path) -> None:
    p.write_bytes(b"")


@pytest.mark.parametrize("damage", [_garbage, _truncate_mdb, _zero_pages, _empty_mdb])
def test_corrupt_index_is_moved_aside_and_rebuilt_from_chunk_files(
    store: FaultyStore, damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(40):
        store.put(V1, i, chunk(i, 256))
    store.close()
    damage(store.disk.index_path / "data.mdb")  # type: ignore[operator]
    again = FaultyStore(store.root, chunk_size=CS, max_size=64 * CS, min_free=0)
    with caplog.at_level(logging.WARNING):
        report = again.open()
    try:
        assert report is not None, again.reason
        assert again.mode == CacheMode.NORMAL
        assert [again.get(V1, i, 256) for i in range(40)] == [chunk(i, 256) for i in range(40)]
        assert report.index_rebuilt, report
        assert "moved to" in caplog.text
        assert list(store.root.glob("index.corrupt-*"))
        assert report.adopted == 40
    finally:
        again.close()


def test_index_records_with_bad_checksums_are_dropped(store: FaultyStore) -> None:
    store.put(V1, 0, chunk(0))
    store.put(V1, 1, chunk(1))
    assert store.index is not None
    # Flip a bit in a mapping's value as a failing disk would: it must not point at the
    # wrong chunk, it must stop pointing at all.
    with store.index.env.begin(write=True, db=store.index.maps) as txn:
        key = map_key(V1, 0)
        value = bytearray(txn.get(key))
        value[0] ^= 0x80
        txn.put(key, bytes(value))
    assert store.get(V1, 0, CS) is None
    assert store.get(V1, 1, CS) == chunk(1)


def test_changed_chunk_size_forgets_old_mappings(store: FaultyStore) -> None:
    store.put(V1, 1, chunk(1))
    store.close()
    again = make_store(store.root, chunk_size=2 * CS)
    try:
        # chunk 1 at 16K would mean bytes 32K..64K now: it must not be served as that.
        assert again.get(V1, 1, 2 * CS) is None
        assert again.status()["chunks"] == 0
    finally:
        again.close()


# -- size limits and eviction --------------------------------------------------------------


def test_cache_never_exceeds_max_size_and_evicts_least_recently_used(root: Path) -> None:
    store = make_store(root, max_size=10 * (CS + HEADER_SIZE))
    try:
        for i in range(10):
            store.put(V1, i, chunk(i))
        store.get(V1, 0, CS)  # chunk 0 is now the most recently used
        for i in range(10, 30):
            store.put(V1, i, chunk(i))
            assert store.used <= store.max_size
        assert store.get(V1, 0, CS) == chunk(0) or store.counters.evicted > 20
        assert store.get(V1, 1, CS) is None  # the oldest went first
        assert store.get(V1, 29, CS) == chunk(29)
        on_disk = sum(p.stat().st_size - HEADER_SIZE for p in files(root, "chunks"))
        assert on_disk == store.used
    finally:
        store.close()


def test_pinned_chunks_are_never_evicted(store: FaultyStore) -> None:
    for i in range(5):
        store.put(V1, i, chunk(i))
    assert store.pin(V1, 2)
    store.evict(0)
    assert store.get(V1, 2, CS) == chunk(2)
    assert store.status()["chunks"] == 1
    store.pin(V1, 2, -1)
    store.evict(0)
    assert store.get(V1, 2, CS) is None


def test_pins_survive_a_restart(store: FaultyStore) -> None:
    store.put(V1, 0, chunk(0))
    store.pin(V1, 0)
    again = reopen(store)
    try:
        again.evict(0)
        assert again.get(V1, 0, CS) == chunk(0)
    finally:
        again.close()


def test_min_free_shrinks_the_budget_when_the_disk_fills(store: FaultyStore) -> None:
    for i in range(20):
        store.put(V1, i, chunk(i))
    before = store.used
    # Someone else fills the filesystem: one chunk's worth left, and 2 must stay free.
    store.limits.min_free = 2 * CS
    store.free_bytes = CS
    assert store.put(V1, 99, chunk(99)) is PutResult.STORED
    assert store.counters.evicted >= 2
    assert store.used <= before - CS


def test_background_maintenance_evicts_down_to_the_low_watermark(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(root, max_size=100 * CS)
    try:
        for i in range(90):
            store.put(V1, i, chunk(i, CS // 4))
        before = store.used
        store.limits.max_size = before  # now over the high watermark
        caplog.set_level(logging.INFO, logger="musicfs.cache")
        store.maintain()
        assert store.used <= int(before * 0.85)
        assert store.used > int(before * 0.85) - CS
        # One INFO line for the round, with what went and what stays.
        rounds = [r for r in caplog.records if r.getMessage().startswith("cache: evicted")]
        assert len(rounds) == 1 and rounds[0].levelno == logging.INFO
        assert f"in {len(store.ledger)} chunks kept" in rounds[0].getMessage()
    finally:
        store.close()


def test_access_times_persist_so_lru_order_survives_a_restart(store: FaultyStore) -> None:
    for i in range(3):
        store.put(V1, i, chunk(i))
    assert store.index is not None
    store.get(V1, 0, CS)
    store.ledger.touched[chunk_hash(chunk(0))] = 2**40  # far in the future: most recent
    store.close()
    again = make_store(store.root, max_size=64 * CS)
    try:
        again.evict(CS)  # keep one
        assert again.get(V1, 0, CS) == chunk(0)
    finally:
        again.close()


# -- batches (the reader's write-behind) ------------------------------------------------------


def test_a_batch_is_written_with_one_index_commit(store: FaultyStore) -> None:
    store.put(V1, 0, chunk(0))
    failpoints.set("cas.index.before_commit", "off")  # counts commits
    items = [(V1, 0, chunk(0)), (V1, 1, chunk(1)), (V2, 0, chunk(1)), (V1, 2, chunk(2))]
    results = store.put_many(items)
    assert failpoints.hits("cas.index.before_commit") == 1
    # Already stored, new, the same bytes again under another version, new.
    assert results == [PutResult.EXISTS, PutResult.STORED, PutResult.EXISTS, PutResult.STORED]
    for version, n, data in items:
        assert store.get(version, n, CS) == data
    assert store.status()["chunks"] == 3
    assert files(store.root, "tmp") == []
    again = reopen(store)
    try:
        assert again.status()["chunks"] == 3
        assert all(again.get(version, n, CS) == data for version, n, data in items)
    finally:
        again.close()


@pytest.mark.parametrize("op", ["open_temp", "write", "fsync", "rename", "fsync_dir"])
def test_a_batch_that_fails_is_stored_one_chunk_at_a_time(store: FaultyStore, op: str) -> None:
    store.fail(op, errno.EIO, times=1)
    items = [(V1, i, chunk(i)) for i in range(5)]
    assert store.put_many(items) == [PutResult.STORED] * 5
    assert all(store.get(V1, i, CS) == chunk(i) for i in range(5))
    assert files(store.root, "tmp") == []
    assert len(files(store.root, "chunks")) == 5
    assert store.mode == CacheMode.NORMAL


def test_a_batch_whose_commit_fails_leaves_no_unrecorded_files(store: FaultyStore) -> None:
    failpoints.set("cas.index.before_commit", "error(EIO)")
    assert store.put_many([(V1, i, chunk(i)) for i in range(3)]) == [PutResult.SKIPPED] * 3
    assert store.mode == CacheMode.PASSTHROUGH  # the chunk-by-chunk path decides, as it always has
    assert files(store.root, "chunks") == [] and files(store.root, "tmp") == []


def test_a_batch_makes_room_for_itself(root: Path) -> None:
    store = make_store(root, max_size=8 * CS)
    try:
        for i in range(7):
            store.put(V1, i, chunk(i))
        assert store.put_many([(V2, i, chunk(50 + i)) for i in range(3)]) == [PutResult.STORED] * 3
        assert store.counters.evicted > 0
        assert store.used <= 8 * CS
        assert all(store.get(V2, i, CS) == chunk(50 + i) for i in range(3))
    finally:
        store.close()


def test_a_batch_that_evicts_a_chunk_it_maps_again_stores_it_again(root: Path) -> None:
    """A batch holding bytes already stored (another version's chunk, deduplicated) and
    new ones: the room made for the new ones may evict those bytes, and the batch must
    not then map its chunk to a file it just deleted."""
    store = make_store(root, max_size=8 * CS)
    try:
        for i in range(7):
            store.put(V1, i, chunk(i))  # chunk 0 is the least recently used: evicted first
        batch = [(V2, 0, chunk(0)), (V2, 1, chunk(50)), (V2, 2, chunk(51))]
        assert PutResult.FULL not in store.put_many(batch)
        assert store.get(V1, 0, CS) is None  # evicted for the batch
        assert [store.get(V2, i, CS) for i in range(3)] == [chunk(0), chunk(50), chunk(51)]
        assert store.counters.missing_files == 0
        assert store.index is not None
        blobs, _ = store.index.all_blobs()
        assert all(store.chunk_path(digest).exists() for digest in blobs)
    finally:
        store.close()


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_a_batch_on_a_full_disk_is_degraded_until_a_write_succeeds(
    store: FaultyStore, err: int
) -> None:
    for i in range(10):
        store.put(V1, i, chunk(i))
    store.fail("write", err)
    assert store.put_many([(V2, i, chunk(50 + i)) for i in range(3)]) == [PutResult.FULL] * 3
    assert store.mode == CacheMode.DEGRADED
    assert store.counters.evicted > 0  # chunk by chunk, it evicted harder before giving up
    assert files(store.root, "tmp") == []
    assert len(files(store.root, "chunks")) == store.status()["chunks"]
    store.heal()
    assert store.put_many([(V2, i, chunk(50 + i)) for i in range(3)]) == [PutResult.STORED] * 3
    assert store.mode == CacheMode.NORMAL


@pytest.mark.parametrize(("point", "files_survive"), WRITE_PATH)
def test_crash_at_each_step_of_a_batch_leaves_a_consistent_store(
    store: FaultyStore, point: str, files_survive: bool
) -> None:
    store.put(V1, 0, chunk(0))
    failpoints.set(point, "panic")
    with pytest.raises(FailpointPanic):
        store.put_many([(V1, i, chunk(i)) for i in range(1, 4)])
    failpoints.clear()
    again = reopen(store)
    try:
        assert files(again.root, "tmp") == []
        assert again.get(V1, 0, CS) == chunk(0)
        for i in range(1, 4):
            assert again.get(V1, i, CS) == (chunk(i) if files_survive else None)
        assert again.status()["chunks"] == (4 if files_survive else 1)
    finally:
        again.close()


# -- full disks ------------------------------------------------------------------------------


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_evicts_and_retries_once(store: FaultyStore, err: int) -> None:
    for i in range(10):
        store.put(V1, i, chunk(i))
    store.fail("write", err, times=1)
    assert store.put(V1, 50, chunk(50)) is PutResult.STORED
    assert store.counters.evicted > 0
    assert store.mode == CacheMode.NORMAL
    assert files(store.root, "tmp") == []


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_still_full_after_eviction_means_degraded_until_a_write_succeeds(
    store: FaultyStore, err: int
) -> None:
    store.put(V1, 0, chunk(0))
    store.fail("write", err)
    assert store.put(V1, 1, chunk(1)) is PutResult.FULL
    assert store.mode == CacheMode.DEGRADED and "no room" in (store.reason or "")
    assert files(store.root, "tmp") == []
    store.heal()
    assert store.put(V1, 2, chunk(2)) is PutResult.STORED
    assert store.mode == CacheMode.NORMAL


def test_no_room_at_all_is_degraded_not_an_error(store: FaultyStore) -> None:
    store.limits.min_free = 10 * CS
    store.free_bytes = CS
    assert store.put(V1, 0, chunk(0)) is PutResult.FULL
    assert store.mode == CacheMode.DEGRADED


def test_failed_index_commit_on_a_full_disk_is_retried_then_degraded(store: FaultyStore) -> None:
    store.put(V1, 0, chunk(0))
    store.free_bytes = 0  # LMDB reports ENOSPC as EIO: the store asks statvfs
    store.limits.min_free = 0
    failpoints.set("cas.index.before_commit", "error(EIO)")
    assert store.put(V1, 1, chunk(1)) is PutResult.FULL
    assert store.mode == CacheMode.DEGRADED
    assert not store.chunk_path(chunk_hash(chunk(1))).exists()


# -- unusable cache directories -----------------------------------------------------------------


@pytest.mark.parametrize("err", [errno.EROFS, errno.EIO, errno.EACCES])
def test_unwritable_cache_means_passthrough_and_recovers_by_probe(
    store: FaultyStore, err: int, caplog: pytest.LogCaptureFixture
) -> None:
    store.put(V1, 0, chunk(0))
    store.fail("open_temp", err)
    with caplog.at_level(logging.ERROR):
        assert store.put(V1, 1, chunk(1)) is PutResult.SKIPPED
    assert store.mode == CacheMode.PASSTHROUGH
    assert "passthrough" in caplog.text and errno.errorcode[err] in caplog.text
    assert store.get(V1, 0, CS) == chunk(0)  # what is stored is still served (read-only)
    assert not store.probe()
    store.heal()
    assert store.probe()
    assert store.mode == CacheMode.NORMAL
    assert store.get(V1, 0, CS) == chunk(0)


def test_failed_index_commit_with_free_space_means_passthrough(store: FaultyStore) -> None:
    failpoints.set("cas.index.before_commit", "error(EIO)")
    assert store.put(V1, 1, chunk(1)) is PutResult.SKIPPED
    assert store.mode == CacheMode.PASSTHROUGH
    assert not store.chunk_path(chunk_hash(chunk(1))).exists()


def test_cache_dir_that_is_a_file_means_passthrough(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("oops")
    store = ChunkStore(tmp_path / "cache", chunk_size=CS)
    assert store.open() is None
    assert store.mode == CacheMode.PASSTHROUGH and "not a directory" in (store.reason or "")
    assert not store.serves_cached
    assert store.put(V1, 0, chunk(0)) is PutResult.SKIPPED
    assert store.get(V1, 0, CS) is None
    (tmp_path / "cache").unlink()
    assert store.probe() and store.mode == CacheMode.NORMAL
    store.close()


def test_unwritable_cache_at_start_up_means_passthrough(root: Path) -> None:
    store = FaultyStore(root, chunk_size=CS, min_free=0)
    store.fail("open_temp", errno.EROFS)
    assert store.open() is None
    assert store.mode == CacheMode.PASSTHROUGH and "EROFS" in (store.reason or "")


# -- read-only passthrough: what is stored keeps playing -------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root``: size, mtime and content hash (to prove nothing changed)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(root))] = (
                st.st_size,
                st.st_mtime_ns,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return out


def go_read_only(store: FaultyStore, err: int = errno.EROFS) -> None:
    """The cache stops taking writes; the next write finds out."""
    store.fail("open_temp", err)
    assert store.put(V2, 99, chunk(99)) is PutResult.SKIPPED
    assert store.mode == CacheMode.PASSTHROUGH and store.serves_cached


@pytest.mark.parametrize("err", [errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM])
def test_unwritable_cache_still_serves_stored_chunks_and_writes_nothing(
    store: FaultyStore, err: int, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(4):
        store.put(V1, i, chunk(i))
    with caplog.at_level(logging.WARNING):
        go_read_only(store, err)
    assert "still serving the 4 stored chunks" in caplog.text
    status = store.status()
    assert (
        status["mode"] == CacheMode.PASSTHROUGH
        and status["serves_cached"]
        and status["chunks"] == 4
    )
    before = snapshot(store.root)
    assert [store.get(V1, i, CS) for i in range(4)] == [chunk(i) for i in range(4)]
    assert store.has(V1, 3) and not store.has(V2, 99)
    assert store.get(V2, 99, CS) is None  # never stored: the origin's job
    assert store.put(V1, 10, chunk(10)) is PutResult.SKIPPED
    assert not store.pin(V1, 0)
    assert store.evict(0) == 0 and store.maintain() == 0
    assert not store.probe()  # still unwritable: stays read-only, nothing re-opened
    assert store.serves_cached and store.get(V1, 0, CS) == chunk(0)
    store.close()
    assert snapshot(store.root) == before


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_read_only_cache_rejects_bad_chunks_but_leaves_them_in_place(
    store: FaultyStore, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    store.put(V1, 0, chunk(0))
    store.put(V1, 1, chunk(1))
    go_read_only(store)
    path = store.chunk_path(chunk_hash(chunk(0)))
    CORRUPTIONS[kind](path)
    before = snapshot(store.root)
    with caplog.at_level(logging.WARNING):
        got = store.get(V1, 0, CS, label="a/b.flac")
    assert isinstance(got, Rejected)  # the reader fetches it from the origin
    assert "'a/b.flac' chunk 0" in caplog.text and "left in place" in caplog.text
    assert store.get(V1, 0, CS) is None  # not read (nor logged) again
    assert store.get(V1, 1, CS) == chunk(1)
    assert store.status()["chunks"] == 1
    assert snapshot(store.root) == before
    # Writable again: the re-open finds the bad file (or the first read of it does).
    store.heal()
    assert store.probe() and store.mode == CacheMode.NORMAL and not store.serves_cached
    assert not isinstance(store.get(V1, 0, CS), bytes)
    assert store.get(V1, 1, CS) == chunk(1)
    assert store.put(V1, 0, chunk(0)) is PutResult.STORED
    assert store.get(V1, 0, CS) == chunk(0)


def test_read_only_cache_read_error_goes_to_the_origin(store: FaultyStore) -> None:
    store.put(V1, 0, chunk(0))
    go_read_only(store)
    before = snapshot(store.root)
    store.fail("read", errno.EIO, times=1)
    assert isinstance(store.get(V1, 0, CS), Rejected)
    assert store.get(V1, 0, CS) is None
    assert snapshot(store.root) == before
    store.heal()
    assert store.probe()
    assert store.get(V1, 0, CS) == chunk(0)  # it was the read, not the chunk


def test_unwritable_cache_at_start_up_serves_what_is_stored(root: Path) -> None:
    first = make_store(root)
    for i in range(3):
        first.put(V1, i, chunk(i))
    first.close()
    store = FaultyStore(root, chunk_size=CS, max_size=64 * CS, min_free=0)
    store.fail("open_temp", errno.EROFS)
    assert store.open() is None
    try:
        assert store.mode == CacheMode.PASSTHROUGH and "EROFS" in (store.reason or "")
        assert store.serves_cached
        assert [store.get(V1, i, CS) for i in range(3)] == [chunk(i) for i in range(3)]
        store.heal()
        assert store.probe() and store.mode == CacheMode.NORMAL
        assert store.put(V1, 3, chunk(3)) is PutResult.STORED
    finally:
        store.close()


def test_a_read_only_index_for_another_chunk_size_is_not_served(root: Path) -> None:
    first = make_store(root)
    first.put(V1, 0, chunk(0))
    first.close()
    with pytest.raises(IndexUnusable, match="chunk size"):
        open_read_only(CacheDisk(root), map_size=2**20, chunk_size=2 * CS)
    index, blobs = open_read_only(CacheDisk(root), map_size=2**20, chunk_size=CS)
    try:
        assert list(blobs) == [chunk_hash(chunk(0))]
        with pytest.raises(lmdb.Error):
            index.set_meta(b"x", b"y")  # opened read-only: it cannot write
    finally:
        index.close()


def test_a_read_only_cache_without_a_usable_index_is_plain_passthrough(root: Path) -> None:
    root.mkdir()
    (root / "lock").write_text("")
    store = FaultyStore(root, chunk_size=CS, min_free=0)
    store.fail("open_temp", errno.EROFS)
    failpoints.set("cas.index.before_commit", "error(EROFS)")
    assert store.open() is None
    assert not store.serves_cached and store.get(V1, 0, CS) is None


def test_second_process_on_the_same_cache_dir_gets_passthrough(store: FaultyStore) -> None:
    other = ChunkStore(store.root, chunk_size=CS)
    assert other.open() is None
    assert "in use by another MusicFS" in (other.reason or "")
    assert not other.serves_cached  # the owner may be writing: its chunks are not ours
    assert other.get(V1, 0, CS) is None
    assert store.mode == CacheMode.NORMAL


def test_lmdb_errors_in_lookups_mean_passthrough(store: FaultyStore) -> None:
    store.put(V1, 0, chunk(0))
    assert store.index is not None
    store.index.env.close()  # any lmdb.Error from here on
    assert store.get(V1, 0, CS) is None
    assert store.mode == CacheMode.PASSTHROUGH
    # The environment itself is sound: re-opened read-only, it serves what is stored...
    assert store.serves_cached and store.get(V1, 0, CS) == chunk(0)
    # ...until it fails too: then nothing is read from the cache.
    assert store.index is not None
    broken = store.index
    broken.env.close()
    assert store.get(V1, 0, CS) is None
    assert store.mode == CacheMode.PASSTHROUGH and not store.serves_cached and store.index is None
    with pytest.raises(lmdb.Error):
        broken.lookup(V1, 0)


def test_a_full_index_map_means_passthrough_then_a_larger_map(root: Path) -> None:
    store = FaultyStore(root, chunk_size=CS, max_size=2**30, min_free=0)
    # An index sized for far fewer chunks than it is given.
    store.session.base_map_size = lambda: 40 * 4096  # type: ignore[method-assign]
    assert store.open() is not None
    try:
        skipped = 0
        for i in range(1200):
            result = store.put(V1, i, chunk(i, 64))
            if result is PutResult.SKIPPED:
                skipped += 1
                assert store.mode == CacheMode.PASSTHROUGH and "map full" in (store.reason or "")
                assert store.probe()  # what the reader's housekeeping does every 30 s
        assert 1 <= skipped <= 4
        assert store.mode == CacheMode.NORMAL
        assert store.get(V1, 1199, 64) == chunk(1199, 64)
        assert store.get(V1, 0, 64) == chunk(0, 64)  # nothing was lost on the way
    finally:
        store.close()


def test_an_index_check_that_cannot_run_keeps_the_index(
    store: FaultyStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store.put(V1, 0, chunk(0))
    store.close()
    # The child interpreter cannot import musicfs (as a badly wrapped install would). A
    # script run by our own interpreter, not /bin/false: Nix's sandbox has only /bin/sh.
    broken = tmp_path / "python-without-musicfs"
    broken.write_text(
        f"#!{sys.executable} -I\nimport sys\nsys.exit(\"No module named 'musicfs'\")\n"
    )
    broken.chmod(0o755)
    monkeypatch.setattr("sys.executable", str(broken))
    again = FaultyStore(store.root, chunk_size=CS, max_size=64 * CS, min_free=0)
    with caplog.at_level(logging.WARNING):
        report = again.open()
    try:
        assert report is not None and not report.index_rebuilt
        assert "could not run (No module named 'musicfs')" in caplog.text
        assert again.get(V1, 0, CS) == chunk(0)
    finally:
        again.close()
