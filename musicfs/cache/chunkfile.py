"""One chunk file: its header, its hash, and the checks a chunk must pass before a byte
of it is served or re-adopted.

A chunk file is a 56-byte header -- magic, kind (a whole chunk or a piece of one, see
``planner.py``), file version, byte offset, payload length and a checksum of those --
followed by the payload, and is named by the hash of the payload.
The header is what lets a lost index be rebuilt from the files: the hash proves the
payload, the header says where it belongs.

Why these choices:

* **1 MiB chunks** (``cache.chunk_size``). Music files are 3-50 MB, so a track is a few to
  a few dozen chunks: few enough files and index records (10 GB = 10k files, a 2 MB
  index) that start-up repair and eviction stay cheap, and one origin request per chunk
  amortises an SFTP/S3 round trip (tens of ms) over enough bytes to reach link speed. A
  seek wastes at most one chunk of transfer, and a miss costs one chunk before its first
  byte (about 0.1 s at 10 MB/s). FUSE reads arrive in 128 KiB pieces; the reader keeps
  recently verified chunks in memory so a chunk is read and hashed once, not 8 times.
* **BLAKE2b-256** from ``hashlib``: in the standard library (no extra dependency in Debian,
  Nix or CI), releases the GIL while hashing so verification in worker threads runs next
  to the trio loop, and hashes ~1.3 GB/s on one core here -- 0.7 ms per chunk, once per
  chunk read from disk. (The ``blake3`` package measured 0.1 ms per MiB on this machine;
  it would be the upgrade if verification ever showed up in a profile.)
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from musicfs.cache.index import HASH_LEN
from musicfs.cache.planner import piece_key, piece_size

MAGIC = b"MFSC"
FORMAT_VERSION = 1
# magic, format, kind, file version, offset, length. Files written before pieces existed
# have a zero (a whole chunk) where the kind is.
_HEADER = struct.Struct(">4sBB2x16sQQ")
KIND_CHUNK = 0
KIND_PIECE = 1
_HEADER_CHECK_LEN = 16
HEADER_SIZE = _HEADER.size + _HEADER_CHECK_LEN


def chunk_hash(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_LEN).digest()


def _header_check(head: bytes) -> bytes:
    return hashlib.blake2b(head, digest_size=_HEADER_CHECK_LEN, person=b"musicfs-chunk").digest()


def encode_header(version: bytes, offset: int, length: int, *, piece: bool = False) -> bytes:
    kind = KIND_PIECE if piece else KIND_CHUNK
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, kind, version, offset, length)
    return head + _header_check(head)


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    version: bytes
    offset: int
    length: int
    piece: bool = False

    def chunk_no(self, chunk_size: int) -> int:
        """The index's chunk number for this file (``piece_key`` for a piece)."""
        if self.piece:
            return piece_key(self.offset // piece_size(chunk_size))
        return self.offset // chunk_size


def decode_header(raw: bytes) -> ChunkHeader | None:
    """The header, or ``None`` if it is not a valid chunk header."""
    if len(raw) < HEADER_SIZE:
        return None
    head = raw[: _HEADER.size]
    if raw[_HEADER.size : HEADER_SIZE] != _header_check(head):
        return None
    magic, fmt, kind, version, offset, length = _HEADER.unpack(head)
    if magic != MAGIC or fmt != FORMAT_VERSION or kind not in (KIND_CHUNK, KIND_PIECE):
        return None
    return ChunkHeader(version, offset, length, kind == KIND_PIECE)


def verify(raw: bytes, digest: bytes, expected: int) -> str | None:
    """Why the chunk file contents ``raw`` are not the ``expected``-byte payload named
    ``digest``, or ``None`` if they are (checked on every read from disk)."""
    if len(raw) < HEADER_SIZE:
        return f"truncated ({len(raw)} bytes)"
    header = decode_header(raw)
    if header is None:
        return "header is damaged"
    if header.length != expected:
        return f"holds {header.length} bytes, expected {expected}"
    if len(raw) != HEADER_SIZE + expected:
        return f"file is {len(raw)} bytes, expected {HEADER_SIZE + expected}"
    if chunk_hash(memoryview(raw)[HEADER_SIZE:]) != digest:
        return "hash mismatch"
    return None


def adoptable(raw: bytes, digest: bytes, chunk_size: int) -> ChunkHeader | str:
    """The header of a chunk file the index does not know, if the file verifies on its own
    (so it can be re-adopted), else why not."""
    header = decode_header(raw)
    if header is None:
        return "its header is invalid"
    unit = piece_size(chunk_size) if header.piece else chunk_size
    if len(raw) != HEADER_SIZE + header.length or header.length > unit:
        return "its length is wrong"
    if header.offset % unit:
        return "it belongs to another chunk size"
    if chunk_hash(memoryview(raw)[HEADER_SIZE:]) != digest:
        return "its hash does not match"
    return header
