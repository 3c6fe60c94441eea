"""Origin URLs: parsed, checked and named (``origins.open`` turns one into an origin).

* a plain path or ``file:///path`` -- a local folder;
* ``sftp://user@host[:port]/path`` -- an SSH server (key or agent auth, known_hosts);
* ``s3://bucket[/prefix]`` -- an S3/MinIO bucket (endpoint, region, TLS from the
  origin's settings; credentials from the environment or a credentials file).

Secrets never come from a URL: a password or access key in one is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit


class OriginURLError(ValueError):
    pass


class OriginConfigError(ValueError):
    """The origin's settings cannot work (no such credentials file, bad endpoint...)."""


@dataclass(frozen=True)
class SFTPAddress:
    user: str | None
    host: str  # a host name, an address, or a Host alias of the SSH config
    port: int | None  # None: from the SSH config, else 22
    path: str


@dataclass(frozen=True)
class S3Address:
    bucket: str
    prefix: str  # "" or ends with "/"


def is_local(url: str, parts: SplitResult) -> bool:
    return parts.scheme == "" or (len(parts.scheme) == 1 and url[1:2] == ":")


def _port(url: str, parts: SplitResult, default: int | None) -> int | None:
    try:
        port = parts.port
    except ValueError:
        raise OriginURLError(f"{url}: the port must be a number from 1 to 65535") from None
    return default if port is None else port


def parse_sftp(url: str) -> SFTPAddress:
    parts = urlsplit(url)
    if parts.password is not None:
        raise OriginURLError("sftp URLs must not contain a password (use key_file or an SSH agent)")
    if not parts.hostname:
        raise OriginURLError(f"{url}: expected sftp://user@host[:port]/path")
    if parts.query or parts.fragment:
        raise OriginURLError(f"{url}: sftp URLs take no ?query or #fragment")
    path = unquote(parts.path) or "/"
    return SFTPAddress(
        unquote(parts.username) if parts.username else None,
        parts.hostname,
        _port(url, parts, None),
        path.rstrip("/") or "/",
    )


def parse_s3(url: str) -> S3Address:
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise OriginURLError(
            "s3 URLs must not contain credentials (use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "or credentials_file)"
        )
    if not parts.netloc:
        raise OriginURLError(f"{url}: expected s3://bucket[/prefix]")
    if parts.query or parts.fragment:
        raise OriginURLError(f"{url}: s3 URLs take no ?query or #fragment")
    prefix = unquote(parts.path).strip("/")
    return S3Address(parts.netloc, prefix + "/" if prefix else "")


def safe_url(url: str) -> str:
    """``url`` with any userinfo password removed, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def validate_url(url: str) -> None:
    """Raise ``OriginURLError`` if ``url`` cannot name an origin (no connection made)."""
    parts = urlsplit(url)
    if is_local(url, parts):
        return
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise OriginURLError(f"{url}: file:// URLs must not name a host")
        return
    if parts.scheme == "sftp":
        parse_sftp(url)
        return
    if parts.scheme == "s3":
        parse_s3(url)
        return
    raise OriginURLError(
        f"{safe_url(url)}: unsupported origin scheme {parts.scheme!r} "
        "(use a path, file://, sftp:// or s3://)"
    )


def default_name(url: str, index: int) -> str:
    parts = urlsplit(url)
    if parts.scheme in ("", "file") or is_local(url, parts):
        return f"local{index}" if index else "local"
    return f"{parts.scheme}{index}" if index else parts.scheme
