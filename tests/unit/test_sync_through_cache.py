"""Layer 1: tags of remote files are read through the chunk cache -- only the chunks
mutagen touches are fetched, and they are cached for playback under the same version."""

from __future__ import annotations

import shutil
from pathlib import Path

import trio

from musicfs.cache.metadata_reads import head_region
from musicfs.cache.reader import CachingReader
from musicfs.cache.store import ChunkStore
from musicfs.catalog.db import Catalog
from musicfs.catalog.tags import Tags
from musicfs.library.sync import sync_origin
from musicfs.origins.pool import OriginPool
from tests.support.faulty_origin import FaultyOrigin, MemoryOrigin
from tests.support.library import tagged_file

CS = 256 * 1024
SIZE = 3 * 1024 * 1024


def remote_library(tmp_path: Path) -> dict[str, bytes]:
    files = {}
    for i, fmt in enumerate(["flac", "mp3", "m4a"]):
        path = tagged_file(
            tmp_path / f"src/{i}.{fmt}", fmt, Tags(title=f"T{i}", album="A", track=i + 1)
        )
        data = path.read_bytes()
        if fmt != "m4a":  # (MP4 atoms must stay where they are)
            data += bytes(SIZE - len(data))
        files[f"album/{i:02d}.{fmt}"] = data
    shutil.rmtree(tmp_path / "src")
    return files


def test_remote_tag_reads_fetch_few_chunks_and_fill_the_cache(tmp_path: Path) -> None:
    files = remote_library(tmp_path)
    origin = FaultyOrigin(MemoryOrigin("nas", files))
    pool = OriginPool([origin])
    catalog = Catalog(tmp_path / "catalog.sqlite")
    fetched: list[tuple[str, int, int]] = []
    inner_read = origin.read

    async def counting(path: str, offset: int, length: int) -> bytes:
        fetched.append((path, offset, length))
        return await inner_read(path, offset, length)

    origin.read = counting  # type: ignore[method-assign]

    def store() -> ChunkStore:
        return ChunkStore(tmp_path / "cache", chunk_size=CS, max_size=1 << 30, min_free=0)

    async def main() -> None:
        reader = CachingReader(store(), pool.read)
        await reader.open()
        result = await sync_origin(catalog, origin, read_track=reader.read_metadata)
        await reader.aclose()
        assert result.added_or_changed == 3 and result.tag_errors == 0
        assert {t.tags.title for t in catalog.tracks()} == {"T0", "T1", "T2"}
        # Pieces, and only the few mutagen touched (start, sometimes the end): no whole
        # chunks, no read-ahead.
        piece = CS // 16
        assert all(offset % piece == 0 for _, offset, _ in fetched)
        # ... the head region a scanner's probe reads next (``head_region``), and the tags
        # at the end: nothing like the files' sizes.
        heads = sum(min(len(data), head_region(path)) for path, data in files.items())
        assert sum(n for _, _, n in fetched) <= heads + 3 * 2 * piece
        assert sum(n for _, _, n in fetched) < sum(map(len, files.values())) / 10

        # Playback of the catalogued tracks starts from the cache: same version keys.
        before = len(fetched)
        fresh = CachingReader(store(), pool.read)  # nothing in memory: the disk store
        await fresh.open()
        for track in catalog.tracks():
            assert await fresh.read(track, 0, 4096) == files[track.path][:4096]
        assert len(fetched) == before and fresh.counters.store_hits == 3
        await fresh.aclose()

    trio.run(main)
