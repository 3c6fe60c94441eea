"""Layer 1: origin URLs, S3 endpoints and credentials -- parsed without any network."""

from __future__ import annotations

from pathlib import Path

import pytest

from musicfs.config import OriginSettings
from musicfs.origins.s3 import _endpoint, load_credentials
from musicfs.origins.urls import (
    OriginConfigError,
    OriginURLError,
    parse_s3,
    parse_sftp,
    safe_url,
    validate_url,
)


def test_sftp_urls() -> None:
    a = parse_sftp("sftp://music@nas.lan:2222/srv/My%20Music/")
    assert (a.user, a.host, a.port, a.path) == ("music", "nas.lan", 2222, "/srv/My Music")
    a = parse_sftp("sftp://nas")
    assert (a.user, a.port, a.path) == (None, None, "/")  # the SSH config's, else 22
    for bad, message in [
        ("sftp://me:pw@nas/x", "must not contain a password"),
        ("sftp:///x", "expected sftp://user@host"),
        ("sftp://nas:99999/x", "port must be a number"),
        ("sftp://nas/x?y=1", "no ?query"),
    ]:
        with pytest.raises(OriginURLError, match=message.replace("?", r"\?")):
            parse_sftp(bad)


def test_s3_urls() -> None:
    assert parse_s3("s3://bucket") == parse_s3("s3://bucket/")
    a = parse_s3("s3://bucket/music/lossless/")
    assert (a.bucket, a.prefix) == ("bucket", "music/lossless/")
    with pytest.raises(OriginURLError, match="must not contain credentials"):
        parse_s3("s3://AKIA:secret@bucket")


def test_unknown_schemes_and_safe_urls() -> None:
    for ok in ("/music", "file:///music", "sftp://h/x", "s3://b", "C:/music"):
        validate_url(ok)
    with pytest.raises(OriginURLError, match="'ftp'") as info:
        validate_url("ftp://me:secret@host/x")
    assert "secret" not in str(info.value)
    assert safe_url("sftp://me:secret@h/x") == "sftp://me:***@h/x"


@pytest.mark.parametrize(
    ("endpoint", "secure", "expected"),
    [
        (None, None, ("s3.amazonaws.com", True)),  # TLS unless told otherwise
        ("minio.lan:9000", None, ("minio.lan:9000", True)),
        ("minio.lan:9000", False, ("minio.lan:9000", False)),
        ("http://minio.lan:9000", None, ("minio.lan:9000", False)),
        ("https://minio.lan", True, ("minio.lan", True)),
    ],
)
def test_s3_endpoint_and_tls(
    endpoint: str | None, secure: bool | None, expected: tuple[str, bool]
) -> None:
    settings = OriginSettings(url="s3://b", endpoint=endpoint, secure=secure)
    assert _endpoint(settings) == expected


def test_s3_endpoint_errors() -> None:
    for endpoint, secure, message in [
        ("http://x", True, "says http but secure = true"),
        ("ftp://x", None, "expected host"),
        ("https://u:p@x", None, "must not contain credentials"),
        ("https://x/path", None, "must not have a path"),
    ]:
        with pytest.raises(OriginConfigError, match=message):
            _endpoint(OriginSettings(url="s3://b", endpoint=endpoint, secure=secure))


def test_s3_credentials_from_environment_or_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    s = OriginSettings(url="s3://b")
    assert load_credentials(s) is None  # anonymous
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA1")
    with pytest.raises(OriginConfigError, match="must be set together"):
        load_credentials(s)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s1")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "t1")
    assert load_credentials(s) == ("AKIA1", "s1", "t1")
    creds = tmp_path / "credentials"
    creds.write_text("[music]\naws_access_key_id = AKIA2\naws_secret_access_key = s2\n")
    from_file = OriginSettings(url="s3://b", credentials_file=creds, profile="music")
    assert load_credentials(from_file) == ("AKIA2", "s2", None)  # the file wins
    creds.write_text("[music]\naws_access_key_id = AKIA2\n")
    with pytest.raises(OriginConfigError, match="needs aws_access_key_id and aws_secret"):
        load_credentials(from_file)
    creds.write_text("not an ini file")
    with pytest.raises(OriginConfigError, match="cannot read credentials file"):
        load_credentials(from_file)
