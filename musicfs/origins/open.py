"""Turn an origin URL from the command line or config into an origin object: a local
folder, an SFTP server or an S3 bucket (``origins.urls`` parses and checks the URL)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from musicfs.origins.base import Origin
from musicfs.origins.local import LocalOrigin
from musicfs.origins.settings import OriginSettings, OriginTimeouts
from musicfs.origins.urls import is_local, parse_s3, parse_sftp, validate_url


def open_origin(
    url: str,
    name: str,
    settings: OriginSettings | None = None,
    timeouts: OriginTimeouts | None = None,
) -> Origin:
    """Build the origin for ``url``. Remote origins connect lazily, so this never waits on
    the network and never fails because a server is down."""
    settings = settings or OriginSettings(url=url, name=name)
    timeouts = timeouts or OriginTimeouts()
    validate_url(url)
    parts = urlsplit(url)
    if is_local(url, parts):
        return LocalOrigin(name, Path(url).expanduser())
    if parts.scheme == "file":
        return LocalOrigin(name, Path(unquote(parts.path)))
    if parts.scheme == "sftp":
        from musicfs.origins.sftp import SFTPOrigin

        return SFTPOrigin(name, parse_sftp(url), settings, timeouts)
    from musicfs.origins.s3 import S3Origin

    return S3Origin(name, parse_s3(url), settings, timeouts)
