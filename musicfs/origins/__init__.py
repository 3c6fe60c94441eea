"""Origins: where the music really lives (local folder, SFTP server, S3 bucket)."""

from musicfs.origins.base import Listing, Origin, OriginEntry, OriginError
from musicfs.origins.open import open_origin

__all__ = ["Listing", "Origin", "OriginEntry", "OriginError", "open_origin"]
