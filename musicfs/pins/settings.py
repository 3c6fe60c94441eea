"""The pins' settings (``musicfs/pins/selection.py``), apart from them so that reading a config does
not import the catalog's tree."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PinSettings:
    parallel: int = 2  # chunk fetches at once while the mount is idle (1 while it reads)
    max_rate: int = 0  # bytes per second pins may fetch at most; 0 = no cap
