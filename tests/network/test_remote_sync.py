"""Layer 3: syncing the catalog from SFTP and S3 -- listing, delta by size + mtime/etag,
tags read through ranged reads (only the bytes mutagen touches), mirrors recognised."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import trio

from musicfs.catalog.db import Catalog
from musicfs.catalog.tags import Tags
from musicfs.config import OriginSettings, OriginTimeouts
from musicfs.library.sync import sync_origin
from musicfs.origins.base import Listing, Origin, OriginEntry
from musicfs.origins.open import open_origin
from tests.support.library import make_library, tagged_file
from tests.support.netns import S3Server, SSHServer

PAD = 3 * 1024 * 1024


class Counting:
    """Counts the bytes an origin is asked for."""

    def __init__(self, inner: Origin):
        self.inner = inner
        self.bytes_read = 0
        self.reads = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def display_url(self) -> str:
        return self.inner.display_url

    async def list(self) -> Listing:
        return await self.inner.list()

    async def stat(self, path: str) -> OriginEntry:
        return await self.inner.stat(path)

    async def read(self, path: str, offset: int, length: int) -> bytes:
        data = await self.inner.read(path, offset, length)
        self.reads += 1
        self.bytes_read += len(data)
        return data

    async def check(self) -> None:
        await self.inner.check()

    async def aclose(self) -> None:
        await self.inner.aclose()


def library(world: Path) -> Path:
    lib = world / "lib"
    made = make_library(lib, albums=2, tracks=3)
    # Big tracks whose tags sit at the start (MP3/ID3v2, FLAC): a sync must not fetch them.
    for path in made:
        if path.suffix in (".mp3", ".flac"):
            with path.open("ab") as f:
                f.write(b"\0" * PAD)
    for p in [lib, *lib.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return lib


def sftp(server: SSHServer, lib: Path) -> Origin:
    url = server.url(lib)
    settings = OriginSettings(
        url=url, name="nas", key_file=server.client_key, known_hosts=server.known_hosts
    )
    return open_origin(url, "nas", settings, OriginTimeouts(operation=3))


def bucket_origin(server: S3Server, monkeypatch) -> Origin:  # type: ignore[no-untyped-def]
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    settings = OriginSettings(url="s3://music", name="s3", endpoint=server.endpoint)
    return open_origin(settings.url, "s3", settings, OriginTimeouts(operation=3))


@pytest.mark.parametrize("kind", ["sftp", "s3"])
def test_remote_sync_reads_only_tag_bytes_and_is_incremental(  # type: ignore[no-untyped-def]
    kind: str, request, world_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    lib = library(world_dir)
    total = sum(p.stat().st_size for p in lib.rglob("*") if p.is_file())
    if kind == "sftp":
        server: SSHServer | S3Server = request.getfixturevalue("sshd")
        assert isinstance(server, SSHServer)
        origin = Counting(sftp(server, lib))
    else:
        server = request.getfixturevalue("s3")
        assert isinstance(server, S3Server)
        server.upload_tree("music", lib)
        origin = Counting(bucket_origin(server, monkeypatch))
    catalog = Catalog(tmp_path / "catalog.sqlite")

    async def main() -> None:
        try:
            first = await sync_origin(catalog, origin, parallel=4)
            assert (first.listed, first.added_or_changed) == (6, 6)
            titles = sorted(t.tags.title or "" for t in catalog.tracks())
            assert titles == sorted(f"Song {a}-{t}" for a in range(2) for t in range(3))
            # Tags came from ranged reads: a small fraction of the library's bytes.
            assert origin.bytes_read < total / 5, (origin.bytes_read, total)
            before = origin.reads
            second = await sync_origin(catalog, origin)
            assert second.added_or_changed == 0 and origin.reads == before
            # Change one file: only it is read again (size differs -> delta).
            changed = next(p for p in lib.rglob("*.mp3"))
            tagged_file(changed, "mp3", Tags(title="Retagged", album="Album 0", track=9))
            rel = str(changed.relative_to(lib))
            if isinstance(server, S3Server):
                data = changed.read_bytes()
                server.client().put_object("music", rel, io.BytesIO(data), len(data))
            third = await sync_origin(catalog, origin)
            assert third.added_or_changed == 1
            assert {t.path: t.tags.title for t in catalog.tracks()}[rel] == "Retagged"
        finally:
            await origin.aclose()

    trio.run(main)
    if kind == "s3":
        assert all(t.etag for t in catalog.tracks()), "S3 versions are etags"


def test_same_library_on_sftp_and_s3_is_one_catalog_with_two_sources(  # type: ignore[no-untyped-def]
    sshd: SSHServer, s3: S3Server, world_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    lib = library(world_dir)
    s3.upload_tree("music", lib)
    catalog = Catalog(tmp_path / "catalog.sqlite")
    nas, bucket = sftp(sshd, lib), bucket_origin(s3, monkeypatch)

    async def main() -> None:
        try:
            a = await sync_origin(catalog, nas)
            b = await sync_origin(catalog, bucket)
            assert (a.added_or_changed, b.new_sources, b.added_or_changed) == (6, 6, 0)
        finally:
            await nas.aclose()
            await bucket.aclose()

    trio.run(main)
    assert all({s.origin for s in t.sources} == {"nas", "s3"} for t in catalog.tracks())
