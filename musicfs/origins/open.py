"""Turn an origin URL from the command line or config into an origin object."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from musicfs.origins.base import Origin
from musicfs.origins.local import LocalOrigin


class OriginURLError(ValueError):
    pass


def default_name(url: str, index: int) -> str:
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        return f"local{index}" if index else "local"
    return f"{parts.scheme}{index}" if index else parts.scheme


def open_origin(url: str, name: str, settings: object | None = None) -> Origin:
    """Build the origin for ``url``: a plain path, ``file:///path`` (``sftp://`` and ``s3://``
    are added by their modules)."""
    parts = urlsplit(url)
    if parts.scheme == "" or (len(parts.scheme) == 1 and url[1:2] == ":"):
        return LocalOrigin(name, Path(url).expanduser())
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise OriginURLError(f"{url}: file:// URLs must not name a host")
        return LocalOrigin(name, Path(unquote(parts.path)))
    raise OriginURLError(
        f"{url}: unsupported origin scheme {parts.scheme!r} (use a path or file://)"
    )
