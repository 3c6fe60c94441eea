"""Closing the daemon's stores at shutdown: in order, each within a bound, one failing
or hanging store never keeping the others from committing."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

log = logging.getLogger(__name__)

Closer = Callable[[], Awaitable[object]]


async def close_in_order(steps: Sequence[tuple[str, Closer]], timeout: float) -> None:
    for name, close in steps:
        with trio.move_on_after(timeout) as scope:
            try:
                await close()
            except Exception:
                log.exception("shutdown: closing %s failed", name)
        if scope.cancelled_caught:
            log.error("shutdown: closing %s took over %.0fs; moving on", name, timeout)
    log.info("shutdown: stores committed and closed")
