"""The daemon's signals: SIGTERM/SIGINT stop (a second one forces an exit), SIGHUP
reloads, SIGUSR1 dumps every stack.

Plain signal handlers, not trio's receiver, so that a second SIGTERM works even when the
event loop is stuck: it runs on the main thread between bytecodes.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
from collections.abc import Callable, Iterator
from types import FrameType

import trio

from musicfs.service.crashlog import dump_stacks

log = logging.getLogger(__name__)


@contextlib.contextmanager
def signal_handlers(
    *,
    stop: Callable[[int], None],
    force: Callable[[int], None],
    reload: Callable[[], None],
) -> Iterator[None]:
    """While inside: the first SIGTERM/SIGINT calls ``stop(signum)`` on the trio loop, any
    further one ``force(signum)`` at once on the main thread; SIGHUP calls ``reload()`` on
    the loop; SIGUSR1 logs every thread's stack and every trio task's."""
    token = trio.lowlevel.current_trio_token()
    stops = 0

    def on_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stops
        stops += 1
        if stops == 1:
            token.run_sync_soon(_first_stop, stop, signum)
        else:
            log.warning(
                "received %s again: unmounting at once, in-flight requests fail",
                signal_name(signum),
            )
            force(signum)

    def on_hup(signum: int, frame: FrameType | None) -> None:
        token.run_sync_soon(reload)

    def on_usr1(signum: int, frame: FrameType | None) -> None:
        token.run_sync_soon(dump_stacks)

    handlers = {
        signal.SIGTERM: on_stop,
        signal.SIGINT: on_stop,
        signal.SIGHUP: on_hup,
        signal.SIGUSR1: on_usr1,
    }
    previous = {signum: signal.signal(signum, fn) for signum, fn in handlers.items()}
    # Thread stacks straight from the C signal handler (works with a wedged loop),
    # then our handler above logs the trio tasks.
    faulthandler.register(signal.SIGUSR1, file=2, all_threads=True, chain=True)
    try:
        yield
    finally:
        faulthandler.unregister(signal.SIGUSR1)
        for signum, old in previous.items():
            signal.signal(signum, old)


def _first_stop(stop: Callable[[int], None], signum: int) -> None:
    log.info("received %s: shutting down (send it again to unmount at once)", signal_name(signum))
    stop(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_now(code: int, before: Callable[[], None] | None = None) -> None:
    """``before()`` (e.g. a lazy unmount), flush the log handlers and leave at once,
    skipping every other cleanup (a forced exit)."""
    if before is not None:
        before()
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(code)
