"""The chunk index (LMDB): which chunk of which file version is which hash, and what each
hash costs (size, last access, pins).

The index is *derived* data: every chunk file carries a checksummed header naming the file
version and offset it was fetched for, so a lost, corrupt or unreadable index is moved
aside and rebuilt from the chunk files (``ChunkStore``), never a fatal error.

LMDB stores what it is given without checksums and a damaged ``data.mdb`` can make the
process that maps it die of SIGBUS. Hence:

* every record carries a short keyed checksum, so a flipped bit in a key or value is
  detected and the record dropped -- it can never send a reader to the wrong chunk;
* ``check_structure`` walks the whole environment in a *child* process first, so a
  damaged file kills a throw-away interpreter, not the daemon.

Databases:

``maps``  key ``version(16) + chunk_no(8)``, value ``hash(32) + check(8)``
``blobs`` key ``hash(32)``, value ``size(8) + last_access(8) + pins(4) + check(8)``
``refs``  key ``hash(32) + version(16) + chunk_no(8)``, empty value -- the reverse of
          ``maps``, so evicting a hash drops every mapping that points at it
``protected`` key ``hash(32)``, value ``check(8)`` -- chunks in the eviction policy's
          protected segment (``policy.py``); advisory, a lost record only demotes a chunk
``meta``  ``format`` and ``chunk_size``
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb

from musicfs.cache.presence import PresenceFilter
from musicfs.failpoints import fail_point

log = logging.getLogger(__name__)

HASH_LEN = 32
VERSION_LEN = 16
FORMAT = b"1"
_CHECK_LEN = 8
_CHUNK_NO = struct.Struct(">Q")
_BLOB = struct.Struct(">QQI")
# A whole-environment walk of a 1 TB cache's index reads ~200 MB: seconds, not minutes.
CHECK_TIMEOUT = 120.0
_CORRUPT_EXIT = 3


class IndexUnusable(Exception):
    """The LMDB environment cannot be used (corrupt, unreadable, or a commit failed)."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    size: int  # bytes of payload
    last_access: int  # unix seconds
    pins: int


def _check(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=_CHECK_LEN, person=b"musicfs-index")
    for part in parts:
        h.update(part)
    return h.digest()


def map_key(version: bytes, chunk_no: int) -> bytes:
    return version + _CHUNK_NO.pack(chunk_no)


def _map_value(key: bytes, digest: bytes) -> bytes:
    return digest + _check(key, digest)


def _parse_map_value(key: bytes, value: bytes) -> bytes | None:
    if len(key) != VERSION_LEN + 8 or len(value) != HASH_LEN + _CHECK_LEN:
        return None
    digest = value[:HASH_LEN]
    return digest if value[HASH_LEN:] == _check(key, digest) else None


def _blob_value(digest: bytes, info: BlobInfo) -> bytes:
    packed = _BLOB.pack(info.size, info.last_access, info.pins)
    return packed + _check(digest, packed)


def _parse_blob_value(digest: bytes, value: bytes) -> BlobInfo | None:
    if len(digest) != HASH_LEN or len(value) != _BLOB.size + _CHECK_LEN:
        return None
    packed = value[: _BLOB.size]
    if value[_BLOB.size :] != _check(digest, packed):
        return None
    size, last_access, pins = _BLOB.unpack(packed)
    return BlobInfo(size, last_access, pins)


def check_structure(path: Path, timeout: float = CHECK_TIMEOUT) -> str | None:
    """Walk every page of the environment at ``path`` in a child process.

    Returns ``None`` if it is sound (or absent), else why not. A damaged ``data.mdb`` can
    make LMDB fault on a page outside the file (SIGBUS); that must kill a child, not us.
    """
    if not (path / "data.mdb").exists():
        return None
    # Our own import path: wrapped interpreters (Nix) do not find musicfs or lmdb otherwise.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "musicfs.cache.index", str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return f"structure check did not finish within {timeout:.0f}s"
    except OSError as exc:
        log.warning("cache: cannot run the index check (%s); opening the index unchecked", exc)
        return None
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        return f"structure check died of signal {-proc.returncode}"
    last = (proc.stderr.strip().splitlines() or ["structure check failed"])[-1]
    if proc.returncode == _CORRUPT_EXIT:
        return last
    # The check itself could not run (say, the child cannot import us): that says nothing
    # about the index, which must not be thrown away (and rebuilt) at every start for it.
    log.warning("cache: the index check could not run (%s); opening the index unchecked", last)
    return None


def _walk(path: Path) -> int:
    """Child side of ``check_structure``: read every record of every database."""
    env = lmdb.open(str(path), max_dbs=8, readonly=True, lock=False, subdir=True)
    try:
        count = 0
        with env.begin() as txn:
            names = [bytes(k) for k, _ in txn.cursor()]
        for name in names:
            db = env.open_db(name, create=False)
            with env.begin(db=db) as txn:
                for _ in txn.cursor():
                    count += 1
        return count
    finally:
        env.close()


def move_aside(path: Path, reason: str) -> Path | None:
    """Rename a broken environment out of the way, keeping only the newest such copy."""
    target = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    for old in path.parent.glob(f"{path.name}.corrupt-*"):
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(path, target)
    except OSError as exc:
        log.error("cache: cannot move index %s aside (%s); deleting it", path, exc)
        shutil.rmtree(path, ignore_errors=True)
        return None
    log.warning("cache: index %s is unusable (%s); moved to %s, rebuilding", path, reason, target)
    return target


class ChunkIndex:
    """Thread-safe: LMDB serialises writers, readers never block. Callers hold the store
    lock around writes so that the in-memory accounting matches what was committed."""

    def __init__(self, path: Path, *, map_size: int, readonly: bool = False):
        """``readonly`` (fsck without --repair) takes no lock and creates nothing."""
        self.path = path
        if not readonly:
            path.mkdir(parents=True, exist_ok=True)
        try:
            self.env = lmdb.open(
                str(path),
                max_dbs=8,
                map_size=map_size,
                subdir=True,
                max_readers=512,
                readonly=readonly,
                lock=not readonly,
                create=not readonly,
            )
        except lmdb.Error as exc:
            raise IndexUnusable(f"cannot open {path}: {exc}") from exc
        try:
            create = not readonly
            self.maps = self.env.open_db(b"maps", create=create)
            self.blobs = self.env.open_db(b"blobs", create=create)
            self.refs = self.env.open_db(b"refs", create=create)
            self.meta = self.env.open_db(b"meta", create=create)
            # Absent in a read-only open of an index written before the policy had segments.
            self.protected = self._optional_db(b"protected", create=create)
        except lmdb.Error as exc:
            self.env.close()
            raise IndexUnusable(f"cannot open databases in {path}: {exc}") from exc
        # Which mappings may exist, in memory (``presence.py``); None until ``load_presence``.
        self.presence: PresenceFilter | None = None

    def _optional_db(self, name: bytes, *, create: bool) -> lmdb._Database | None:
        try:
            return self.env.open_db(name, create=create)
        except lmdb.NotFoundError:
            return None

    def close(self) -> None:
        self.env.close()

    # -- reads -----------------------------------------------------------------------

    def load_presence(self, expected_keys: int = 0) -> PresenceFilter:
        """Fill the presence filter from every mapping (at open, after repair); from then
        on every mapping written is added to it as well."""
        found = PresenceFilter(expected_keys)
        with self.env.begin(db=self.maps) as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                if len(key) == VERSION_LEN + 8:
                    found.add(bytes(key[:VERSION_LEN]), _CHUNK_NO.unpack(key[VERSION_LEN:])[0])
        self.presence = found
        return found

    def may_hold(self, version: bytes, chunk_no: int) -> bool:
        """False only if no mapping for the key exists (no lookup, no thread needed)."""
        presence = self.presence
        return presence is None or presence.may_hold(version, chunk_no)

    def lookup(self, version: bytes, chunk_no: int) -> bytes | None:
        key = map_key(version, chunk_no)
        with self.env.begin(db=self.maps) as txn:
            value = txn.get(key)
        if value is None:
            return None
        digest = _parse_map_value(key, bytes(value))
        if digest is None:
            log.warning("cache: index record for chunk %d has a bad checksum; dropped", chunk_no)
            self._drop_bad_map(key)
        return digest

    def blob(self, digest: bytes) -> BlobInfo | None:
        with self.env.begin(db=self.blobs) as txn:
            value = txn.get(digest)
        return None if value is None else _parse_blob_value(digest, bytes(value))

    def get_meta(self, key: bytes) -> bytes | None:
        with self.env.begin(db=self.meta) as txn:
            value = txn.get(key)
        return None if value is None else bytes(value)

    def all_blobs(self) -> tuple[dict[bytes, BlobInfo], list[bytes]]:
        """Every valid blob record, and the keys of records that failed their checksum."""
        good: dict[bytes, BlobInfo] = {}
        bad: list[bytes] = []
        with self.env.begin(db=self.blobs) as txn:
            for key, value in txn.cursor():
                digest = bytes(key)
                info = _parse_blob_value(digest, bytes(value))
                if info is None:
                    bad.append(digest)
                else:
                    good[digest] = info
        return good, bad

    def all_protected(self) -> set[bytes]:
        """Hashes recorded in the protected segment (records failing their check are
        ignored: the chunk is then probationary, which costs nothing but its protection)."""
        if self.protected is None:
            return set()
        with self.env.begin(db=self.protected) as txn:
            return {
                bytes(key)
                for key, value in txn.cursor()
                if len(key) == HASH_LEN and bytes(value) == _check(bytes(key), b"protected")
            }

    def all_maps(self) -> Iterator[tuple[bytes, bytes | None]]:
        """``(map key, hash or None if the record is bad)`` for every mapping."""
        with self.env.begin(db=self.maps) as txn:
            items = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
        for key, value in items:
            yield key, _parse_map_value(key, value)

    def counts(self) -> dict[str, int]:
        with self.env.begin() as txn:
            return {
                "maps": txn.stat(self.maps)["entries"],
                "blobs": txn.stat(self.blobs)["entries"],
                "refs": txn.stat(self.refs)["entries"],
            }

    # -- writes ----------------------------------------------------------------------

    def _commit(self, txn: lmdb.Transaction) -> None:
        """The index commit is the point of truth of every store change."""
        try:
            fail_point("cas.index.before_commit")
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        fail_point("cas.index.after_commit")

    def _write(self) -> lmdb.Transaction:
        return self.env.begin(write=True)

    def add(self, version: bytes, chunk_no: int, digest: bytes, size: int, now: int) -> None:
        """Record ``(version, chunk_no) -> digest``, creating the blob record if new."""
        self.add_many([(version, chunk_no, digest, size)], now)

    def add_many(self, entries: Iterable[tuple[bytes, int, bytes, int]], now: int) -> None:
        """``add`` for many ``(version, chunk_no, digest, size)`` in one commit."""
        txn = self._write()
        try:
            for version, chunk_no, digest, size in entries:
                # Before the commit: a reader must never be told "absent" for a mapping
                # that exists (one told "perhaps" for an aborted one just looks it up).
                if self.presence is not None:
                    self.presence.add(version, chunk_no)
                self._add(txn, map_key(version, chunk_no), digest, size, now)
        except BaseException:
            txn.abort()
            raise
        self._commit(txn)

    def _add(self, txn: lmdb.Transaction, key: bytes, digest: bytes, size: int, now: int) -> None:
        old = txn.get(key, db=self.maps)
        if old is not None:
            old_digest = bytes(old)[:HASH_LEN]
            txn.delete(old_digest + key, db=self.refs)
        txn.put(key, _map_value(key, digest), db=self.maps)
        txn.put(digest + key, b"", db=self.refs)
        existing = txn.get(digest, db=self.blobs)
        info = None if existing is None else _parse_blob_value(digest, bytes(existing))
        if info is None or info.size != size:
            info = BlobInfo(size, now, 0)
        else:
            info = BlobInfo(size, now, info.pins)
        txn.put(digest, _blob_value(digest, info), db=self.blobs)

    def drop_blobs(self, digests: Iterable[bytes]) -> None:
        """Forget hashes and every mapping that points at them, in one commit."""
        txn = self._write()
        try:
            for digest in digests:
                txn.delete(digest, db=self.blobs)
                if self.protected is not None:
                    txn.delete(digest, db=self.protected)
                cursor = txn.cursor(db=self.refs)
                keys: list[bytes] = []
                if cursor.set_range(digest):
                    for ref, _ in cursor:
                        ref = bytes(ref)
                        if not ref.startswith(digest):
                            break
                        keys.append(ref)
                for ref in keys:
                    txn.delete(ref, db=self.refs)
                    mkey = ref[HASH_LEN:]
                    value = txn.get(mkey, db=self.maps)
                    # Only drop the mapping if it still points here (refs are advisory).
                    if value is not None and bytes(value)[:HASH_LEN] == digest:
                        txn.delete(mkey, db=self.maps)
        except BaseException:
            txn.abort()
            raise
        self._commit(txn)

    def drop_maps(self, keys: Iterable[bytes]) -> None:
        txn = self._write()
        try:
            for key in keys:
                value = txn.get(key, db=self.maps)
                if value is not None:
                    txn.delete(bytes(value)[:HASH_LEN] + key, db=self.refs)
                txn.delete(key, db=self.maps)
        except BaseException:
            txn.abort()
            raise
        self._commit(txn)

    def _drop_bad_map(self, key: bytes) -> None:
        try:
            self.drop_maps([key])
        except Exception as exc:  # the record stays bad; it is re-checked on every read
            log.warning("cache: cannot drop bad index record: %s", exc)

    def set_pins(self, digest: bytes, delta: int) -> int:
        txn = self._write()
        try:
            value = txn.get(digest, db=self.blobs)
            info = None if value is None else _parse_blob_value(digest, bytes(value))
            if info is None:
                txn.abort()
                return 0
            pins = max(0, info.pins + delta)
            txn.put(
                digest,
                _blob_value(digest, BlobInfo(info.size, info.last_access, pins)),
                db=self.blobs,
            )
        except BaseException:
            txn.abort()
            raise
        self._commit(txn)
        return pins

    def set_pin_counts(self, counts: dict[bytes, int]) -> None:
        """Store absolute pin counts for these hashes, in one commit (unknown ones are
        skipped: they were evicted or never stored)."""
        txn = self._write()
        try:
            for digest, pins in counts.items():
                value = txn.get(digest, db=self.blobs)
                info = None if value is None else _parse_blob_value(digest, bytes(value))
                if info is not None and info.pins != pins:
                    new = BlobInfo(info.size, info.last_access, max(0, pins))
                    txn.put(digest, _blob_value(digest, new), db=self.blobs)
        except BaseException:
            txn.abort()
            raise
        self._commit(txn)

    def touch(self, accesses: dict[bytes, int], segments: dict[bytes, bool] | None = None) -> None:
        """Store last-access times and moves between the policy's segments (``digest ->
        protected``), batched: an LMDB commit per read would cost an fsync."""
        txn = self._write()
        try:
            for digest, protected in (segments or {}).items():
                if self.protected is None:
                    break
                if protected:
                    txn.put(digest, _check(digest, b"protected"), db=self.protected)
                else:
                    txn.delete(digest, db=self.protected)
            for digest, when in accesses.items():
                value = txn.get(digest, db=self.blobs)
                info = None if value is None else _parse_blob_value(digest, bytes(value))
                if info is not None:
                    new = BlobInfo(info.size, when, info.pins)
                    txn.put(digest, _blob_value(digest, new), db=self.blobs)
        except BaseException:
            txn.abort()
            raise
        self._commit(txn)

    def set_meta(self, key: bytes, value: bytes) -> None:
        txn = self._write()
        try:
            txn.put(key, value, db=self.meta)
        except BaseException:
            txn.abort()
            raise
        self._commit(txn)

    def clear(self) -> None:
        txn = self._write()
        try:
            for db in (self.maps, self.blobs, self.refs, self.protected):
                if db is not None:
                    txn.drop(db, delete=False)
        except BaseException:
            txn.abort()
            raise
        self._commit(txn)


if __name__ == "__main__":  # the child side of check_structure
    try:
        _walk(Path(sys.argv[1]))
    except Exception as exc:  # whatever a damaged file makes LMDB or py-lmdb raise
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(_CORRUPT_EXIT)
