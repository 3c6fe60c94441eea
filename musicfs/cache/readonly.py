"""Passthrough with a readable cache: the chunks already stored keep being served.

When the cache directory stops taking writes (EROFS, EACCES, EIO on a write, a full index
map) the store goes passthrough, but the chunks on disk are still there and can still be
verified -- with the origins offline too they are all a player has. So the read-write
LMDB environment is closed (nothing on a failing disk is written again, not even LMDB's
reader table) and the index is re-opened read-only without a lock file. Every chunk read
is still verified against its hash; a read error or a mismatch sends the read to the
origin, and the bad chunk is left where it is (quarantining it would be a write) and not
read again until the cache is writable and re-opened.
"""

from __future__ import annotations

from musicfs.cache.disk import CacheDisk
from musicfs.cache.index import BlobInfo, ChunkIndex, IndexUnusable, check_structure


def open_read_only(
    disk: CacheDisk, *, map_size: int, chunk_size: int
) -> tuple[ChunkIndex, dict[bytes, BlobInfo]]:
    """The index opened read-only and its chunk records. Raises ``IndexUnusable`` (or an
    ``OSError`` / ``lmdb.Error``) if it cannot be trusted without being repaired."""
    if not (disk.index_path / "data.mdb").exists():
        raise IndexUnusable("no index to serve stored chunks from")
    # Checked in a child: a damaged data.mdb cannot be moved aside on a read-only disk,
    # and must not kill the daemon with SIGBUS.
    problem = check_structure(disk.index_path)
    if problem is not None:
        raise IndexUnusable(problem)
    index = ChunkIndex(disk.index_path, map_size=map_size, readonly=True)
    try:
        have = index.get_meta(b"chunk_size")
        if have != str(chunk_size).encode():
            # Its chunk numbers mean other byte ranges; only a repair can fix that.
            found = (have or b"unknown").decode(errors="replace")
            raise IndexUnusable(f"the index is for chunk size {found}, not {chunk_size}")
        blobs, _ = index.all_blobs()
    except BaseException:
        index.close()
        raise
    return index, blobs
