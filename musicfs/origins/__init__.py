"""Origins: where the music really lives (local folder, SFTP server, S3 bucket).

``open_origin`` is in ``musicfs.origins.open``: importing it loads every origin and trio,
which commands that only read a config (``musicfs search``) do not need."""

from musicfs.origins.base import Listing, Origin, OriginEntry, OriginError

__all__ = ["Listing", "Origin", "OriginEntry", "OriginError"]
