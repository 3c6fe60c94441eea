"""The cache's own settings ([cache] in the config): the chunk store's size limits and
layout, the reader's memory and passthrough retries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CacheSettings:
    max_size: int = 10 * 1024**3
    min_free: int = 1024**3
    chunk_size: int = 1024 * 1024
    # Recently verified chunks kept in RAM: FUSE reads a 1 MiB chunk in 8 pieces.
    memory: int = 16 * 1024 * 1024
    # How often an unusable cache (passthrough) is tried again: re-opened and repaired.
    retry_interval: float = 30.0
