"""The reader's background nursery, while ``CachingReader.run`` runs.

Loads run in it rather than in the read that started them: a read that hits its deadline
does not waste the fetch, and the others waiting for it still get it. Without it (tests,
one-shot commands) loads run inline and nothing is read ahead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio


class Background:
    def __init__(self) -> None:
        self.nursery: trio.Nursery | None = None

    @property
    def running(self) -> bool:
        return self.nursery is not None

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Start ``fn`` in the background; only while ``running``."""
        assert self.nursery is not None
        self.nursery.start_soon(fn, *args)

    async def spawn(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Run ``fn`` in the background if there is one, else inline."""
        if self.nursery is not None:
            self.nursery.start_soon(fn, *args)
        else:
            await fn(*args)
