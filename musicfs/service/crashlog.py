"""Crash visibility: nothing in the daemon may die without a logged traceback.

* ``install_hooks()``: ``sys.excepthook``, ``threading.excepthook`` and
  ``sys.unraisablehook`` log through ``logging`` with the thread's name, and
  ``faulthandler`` prints every thread's stack on a fatal signal (SIGSEGV, SIGABRT -- the
  signal systemd's watchdog uses -- ...).
* ``named_task(name, fn)``: wraps a trio task so an exception escaping it is logged with
  the task's name before it propagates.
* ``dump_stacks()``: every thread's stack (faulthandler) plus every trio task's await
  stack, for SIGUSR1 -- what is the daemon doing right now?
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any

import trio

from musicfs.resources import leaves

log = logging.getLogger("musicfs.crash")


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    log.critical(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )


def _log_exception(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    log.critical("uncaught exception in the main thread", exc_info=(exc_type, exc, tb))


def _log_unraisable(unraisable: Any) -> None:
    exc = unraisable.exc_value
    log.error(
        "unraisable exception in %r: %s",
        unraisable.object,
        unraisable.err_msg or "",
        exc_info=(unraisable.exc_type, exc, unraisable.exc_traceback) if exc else None,
    )


def install_hooks() -> None:
    sys.excepthook = _log_exception
    threading.excepthook = _log_thread_exception
    sys.unraisablehook = _log_unraisable
    if not faulthandler.is_enabled():
        faulthandler.enable(file=2, all_threads=True)


def only_cancelled(exc: BaseException) -> bool:
    """True for ``trio.Cancelled`` and for exception groups made only of it."""
    return all(isinstance(leaf, trio.Cancelled) for leaf in leaves(exc))


def named_task(name: str, fn: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
    """``fn`` as a trio task whose escaping exception is logged with ``name``."""

    async def run() -> None:
        try:
            await fn()
        except BaseException as exc:
            if not only_cancelled(exc) and not isinstance(exc, KeyboardInterrupt | SystemExit):
                log.critical("task %s crashed", name, exc_info=exc)
            raise

    run.__name__ = run.__qualname__ = name
    return run


_TRIO_INTERNALS = f"{os.sep}trio{os.sep}_"


def _walk(task: trio.lowlevel.Task, depth: int = 0) -> Iterator[tuple[int, trio.lowlevel.Task]]:
    yield depth, task
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            yield from _walk(child, depth + 1)


def task_stacks() -> list[str]:
    """One line per trio task, followed by its await stack. Call on the trio loop."""
    lines: list[str] = []
    root = trio.lowlevel.current_root_task()
    if root is None:
        return lines
    for depth, task in _walk(root):
        lines.append(f"{'  ' * depth}task {task.name}")
        frames = [
            f"{frame.f_code.co_filename}:{lineno} in {frame.f_code.co_name}"
            for frame, lineno in task.iter_await_frames()
            if _TRIO_INTERNALS not in frame.f_code.co_filename
        ]
        lines.extend(f"{'  ' * depth}    {f}" for f in frames)
    return lines


def dump_stacks() -> None:
    """Log every trio task's stack. (Thread stacks come from faulthandler on the same
    signal, printed even when the event loop itself is stuck.)"""
    lines = task_stacks()
    tasks = sum(1 for line in lines if line.lstrip().startswith("task "))
    log.warning("stack dump: %d trio tasks\n%s", tasks, "\n".join(lines))


def format_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()
