"""Layer 3: the S3 origin against moto's S3 server (authentication on) in a network
namespace, and every kind of bad input."""

from __future__ import annotations

import errno
import io
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from musicfs.catalog.model import Source, Track
from musicfs.catalog.tags import Tags
from musicfs.config import ConfigError, OriginSettings, OriginTimeouts, settings_from_dict
from musicfs.origins.base import OriginError
from musicfs.origins.open import open_origin
from musicfs.origins.pool import OriginPool
from musicfs.origins.s3 import S3Origin
from musicfs.origins.urls import OriginConfigError
from tests.support.netns import NetNS, S3Server
from tests.support.tls import make_server_cert

T = TypeVar("T")
TIMEOUT = 1.5
BIG = bytes(range(256)) * (16 * 1024)  # 4 MiB


@pytest.fixture
def bucket(s3: S3Server, world_dir: Path) -> str:
    lib = world_dir / "lib"
    (lib / "music" / "artist" / "album").mkdir(parents=True)
    (lib / "music" / "artist" / "album" / "01.flac").write_bytes(BIG)
    (lib / "music" / "artist" / "album" / "02.flac").write_bytes(b"small")
    (lib / "music" / "secret").mkdir()
    (lib / "music" / "secret" / "03.flac").write_bytes(b"hidden")
    (lib / "elsewhere.flac").write_bytes(b"outside the prefix")
    s3.upload_tree("music", lib)
    return "music"


def origin(  # type: ignore[no-untyped-def]
    s3: S3Server,
    monkeypatch,
    url: str = "s3://music/music",
    env: dict[str, str] | None = None,
    **kw: Any,
) -> S3Origin:
    for k, v in {**s3.env(), **(env or {})}.items():
        monkeypatch.setenv(k, v)
    settings = replace(OriginSettings(url=url, name="bucket", endpoint=s3.endpoint), **kw)
    o = open_origin(url, "bucket", settings, OriginTimeouts(operation=TIMEOUT))
    assert isinstance(o, S3Origin)
    return o


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return trio.run(fn)


def fails(fn: Callable[[], Awaitable[Any]], within: float) -> OriginError:
    async def main() -> OriginError:
        with pytest.raises(OriginError) as info:
            await fn()
        return info.value

    started = time.monotonic()
    exc = trio.run(main)
    took = time.monotonic() - started
    assert took < within, f"took {took:.2f}s: {exc}"
    return exc


def test_list_stat_ranged_read_and_etag_versions(s3: S3Server, bucket: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    o = origin(s3, monkeypatch)

    async def main() -> None:
        await o.check()
        listing = await o.list()
        by_path = {e.path: e for e in listing.entries}
        assert sorted(by_path) == [
            "artist/album/01.flac",
            "artist/album/02.flac",
            "secret/03.flac",
        ]
        big = by_path["artist/album/01.flac"]
        assert big.size == len(BIG) and big.etag and big.mtime_ns > 0
        st = await o.stat("artist/album/01.flac")
        assert (st.size, st.etag) == (big.size, big.etag)
        assert await o.read("artist/album/01.flac", 1000, 300_000) == BIG[1000:301_000]
        assert await o.read("artist/album/01.flac", len(BIG) - 5, 100) == BIG[-5:]
        assert await o.read("artist/album/01.flac", len(BIG), 100) == b""
        # A new upload is a new version: the etag changes.
        s3.client().put_object("music", "music/artist/album/02.flac", io.BytesIO(b"SMALL"), 5)
        assert (await o.stat("artist/album/02.flac")).etag != by_path["artist/album/02.flac"].etag

    run(main)


def test_listing_is_paginated(s3: S3Server, world_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    lib = world_dir / "many"
    for i in range(1105):  # more than one 1000-key page
        (lib / f"d{i // 100}").mkdir(parents=True, exist_ok=True)
        (lib / f"d{i // 100}" / f"{i:04d}.mp3").write_bytes(b"x")
    s3.upload_tree("many", lib)
    o = origin(s3, monkeypatch, url="s3://many")
    listing = run(o.list)
    assert len(listing.entries) == 1105


def test_credentials_never_in_logs_status_or_errors(
    s3: S3Server, bucket: str, monkeypatch, caplog
) -> None:  # type: ignore[no-untyped-def]
    o = origin(s3, monkeypatch)
    pool = OriginPool([o])
    run(o.check)
    bad = origin(s3, monkeypatch, env={"AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    exc = fails(bad.check, within=TIMEOUT + 2)
    assert exc.errno == errno.EACCES and "SignatureDoesNotMatch" in str(exc)
    text = caplog.text + str(pool.status()) + str(exc) + o.display_url
    assert s3.secret_key not in text and "wrong-secret" not in text


def test_credentials_from_a_file(s3: S3Server, bucket: str, world_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    creds = world_dir / "credentials"
    creds.write_text(
        f"[other]\naws_access_key_id = {s3.access_key}\naws_secret_access_key = {s3.secret_key}\n"
    )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    settings = OriginSettings(
        url="s3://music/music",
        name="b",
        endpoint=s3.endpoint,
        credentials_file=creds,
        profile="other",
    )
    o = open_origin(settings.url, "b", settings, OriginTimeouts(operation=TIMEOUT))
    run(o.check)
    with pytest.raises(OriginConfigError, match=r"has no \[default\] section"):
        open_origin(settings.url, "b", replace(settings, profile="default"))
    with pytest.raises(OriginConfigError, match="does not exist"):
        open_origin(settings.url, "b", replace(settings, credentials_file=world_dir / "nope"))


def test_wrong_credentials(s3: S3Server, bucket: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    o = origin(s3, monkeypatch, env={"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1"})
    exc = fails(o.check, within=TIMEOUT + 2)
    assert exc.errno == errno.EACCES and exc.origin_wide
    assert "InvalidAccessKeyId" in str(exc)


def test_missing_bucket(s3: S3Server, bucket: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    o = origin(s3, monkeypatch, url="s3://no-such-bucket")
    exc = fails(o.check, within=TIMEOUT + 2)
    assert exc.errno == errno.ENOENT and exc.origin_wide
    assert "bucket 'no-such-bucket' does not exist" in str(exc)
    exc = fails(o.list, within=TIMEOUT + 2)
    assert exc.errno == errno.ENOENT


def test_permission_denied_on_an_object(s3: S3Server, bucket: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    o = origin(s3, monkeypatch)
    pool = OriginPool([o], read_deadline=5, operation_timeout=TIMEOUT)
    track = Track(1, "secret/03.flac", 6, 0, None, Tags(), sources=(Source("bucket", 6, 0, None),))

    async def main() -> None:
        with pytest.raises(OriginError) as info:
            await pool.read(track, 0, 6)
        assert info.value.errno == errno.EACCES and info.value.path == "secret/03.flac"
        await o.check()  # one forbidden object does not make the bucket unhealthy
        assert pool.health.state("bucket").value == "healthy"

    run(main)


def test_refused_connection(s3: S3Server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    o = origin(s3, monkeypatch, endpoint=f"http://{s3.ns.ip}:9999")
    exc = fails(o.check, within=1.0)
    assert exc.errno == errno.ECONNREFUSED


def test_dns_failure(s3: S3Server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    o = origin(s3, monkeypatch, endpoint="http://no-such-host.invalid:9000")
    exc = fails(o.check, within=TIMEOUT + 6)
    assert exc.errno in (errno.EHOSTUNREACH, errno.ETIMEDOUT)


def test_unreachable_endpoint_times_out(s3: S3Server, bucket: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    o = origin(s3, monkeypatch)
    s3.ns.blackhole()
    exc = fails(lambda: o.read("artist/album/02.flac", 0, 5), within=TIMEOUT + 1)
    assert exc.errno == errno.ETIMEDOUT
    s3.ns.unblackhole()
    assert run(lambda: o.read("artist/album/02.flac", 0, 5)) == b"small"


def test_object_vanishes_or_shrinks_between_listing_and_read(
    s3: S3Server, bucket: str, monkeypatch, caplog
) -> None:  # type: ignore[no-untyped-def]
    o = origin(s3, monkeypatch)
    pool = OriginPool([o], read_deadline=5, operation_timeout=TIMEOUT)

    def track(path: str, size: int) -> Track:
        return Track(1, path, size, 0, None, Tags(), sources=(Source("bucket", size, 0, None),))

    async def main() -> None:
        await o.list()
        client = s3.client()
        client.remove_object("music", "music/artist/album/02.flac")
        client.put_object("music", "music/artist/album/01.flac", io.BytesIO(b"short"), 5)
        with pytest.raises(OriginError) as info:
            await pool.read(track("artist/album/02.flac", 5), 0, 5)
        assert info.value.errno == errno.ENOENT
        with pytest.raises(OriginError) as info:
            await pool.read(track("artist/album/01.flac", len(BIG)), 1000, 1000)
        assert info.value.errno == errno.EIO and "changed since the last sync" in str(info.value)

    run(main)
    assert "origin=bucket path='artist/album/02.flac'" in caplog.text


def test_server_stalls_mid_transfer(s3: S3Server, bucket: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    o = origin(s3, monkeypatch)
    run(lambda: o.read("artist/album/01.flac", 0, 10))
    pids = s3.ns.pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        exc = fails(lambda: o.read("artist/album/01.flac", 0, len(BIG)), within=TIMEOUT + 1.5)
        assert exc.errno == errno.ETIMEDOUT
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert run(lambda: o.read("artist/album/02.flac", 0, 5)) == b"small"


def test_kill_server_mid_read(s3: S3Server, bucket: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    o = origin(s3, monkeypatch)

    async def main() -> list[BaseException]:
        errors: list[BaseException] = []

        async def big() -> None:
            try:
                await o.read("artist/album/01.flac", 0, len(BIG))
            except OriginError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(big)
            await trio.sleep(0.02)
            await trio.to_thread.run_sync(s3.kill)
        with pytest.raises(OriginError) as info:
            await o.check()
        assert info.value.errno in (errno.ECONNREFUSED, errno.ECONNRESET)
        return errors

    started = time.monotonic()
    run(main)
    assert time.monotonic() - started < TIMEOUT + 3


@pytest.mark.parametrize(
    ("origin_cfg", "message"),
    [
        ({"url": "s3://AKIA:secret@bucket"}, "must not contain credentials"),
        ({"url": "s3://"}, "expected s3://bucket"),
        ({"url": "s3://b", "endpoint": "ftp://x"}, "expected host[:port]"),
        ({"url": "s3://b", "endpoint": "http://x", "secure": True}, "says http but secure"),
    ],
)
def test_bad_s3_settings_are_config_errors(origin_cfg: dict[str, Any], message: str) -> None:
    from musicfs.library.coordinator import open_pool

    with pytest.raises(ConfigError) as info:
        open_pool(settings_from_dict({"origin": [origin_cfg]}))
    assert message in str(info.value)
    assert "secret" not in str(info.value)


@pytest.fixture
def s3_tls(world_dir: Path) -> Iterator[S3Server]:
    """moto serving HTTPS with a certificate from a private CA (as a NAS's MinIO would)."""
    with NetNS() as ns:
        cert = make_server_cert(world_dir / "tls", ns.ip)
        server = S3Server(ns, world_dir, auth=False, tls=cert).start()
        lib = world_dir / "tls-lib"
        (lib / "album").mkdir(parents=True)
        (lib / "album" / "01.flac").write_bytes(BIG)
        server.upload_tree("music", lib)
        yield server


def test_tls_with_the_private_ca_in_ca_file(s3_tls: S3Server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert s3_tls.tls is not None and s3_tls.endpoint.startswith("https://")
    o = origin(s3_tls, monkeypatch, url="s3://music", ca_file=s3_tls.tls.ca)
    assert o.secure

    async def main() -> None:
        await o.check()
        assert [e.path for e in (await o.list()).entries] == ["album/01.flac"]
        assert await o.read("album/01.flac", 4096, 100_000) == BIG[4096:104_096]

    run(main)


def test_tls_certificate_not_trusted_is_refused(s3_tls: S3Server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Without the CA the certificate does not verify: the origin is refused as a whole,
    the reason named, nothing sent -- never a silent fallback to unverified TLS."""
    o = origin(s3_tls, monkeypatch, url="s3://music")
    exc = fails(o.check, within=TIMEOUT + 2)
    assert exc.errno == errno.EPROTO and exc.origin_wide
    assert "certificate not trusted (unable to get local issuer certificate)" in str(exc)
    assert "ca_file" in str(exc)
    exc = fails(lambda: o.read("album/01.flac", 0, 10), within=TIMEOUT + 2)
    assert exc.errno == errno.EPROTO


def test_ca_file_settings_are_checked(s3_tls: S3Server, world_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OriginConfigError, match=r"ca_file .* does not exist"):
        origin(s3_tls, monkeypatch, url="s3://music", ca_file=world_dir / "missing.pem")
    assert s3_tls.tls is not None
    with pytest.raises(OriginConfigError, match="TLS is off"):
        plain = s3_tls.endpoint.removeprefix("https://")
        origin(
            s3_tls,
            monkeypatch,
            url="s3://music",
            ca_file=s3_tls.tls.ca,
            endpoint=plain,
            secure=False,
        )
