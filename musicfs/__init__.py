"""MusicFS: a read-only FUSE view of a music library organised by tags."""

__version__ = "0.1.0"
