"""Recognise this process running short of memory, threads or descriptors.

Such a shortage surfaces in many shapes: ``MemoryError``, ``RuntimeError("can't start
new thread")`` from a worker-thread pool, ``OSError`` with EMFILE/ENFILE/ENOMEM, each
possibly wrapped in a trio exception group. The request that met it answers EIO; the
origin is not to blame, the cache is not broken, and the operator needs one clear line,
not a traceback per read.
"""

from __future__ import annotations

import errno

SHORTAGE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def shortage(exc: BaseException) -> OSError | None:
    """An errno-carrying description of the resource shortage behind ``exc``, or None
    if ``exc`` is something else."""
    for leaf in leaves(exc):
        if isinstance(leaf, MemoryError):
            return OSError(errno.ENOMEM, "out of memory")
        if isinstance(leaf, RuntimeError) and "start new thread" in str(leaf):
            return OSError(errno.ENOMEM, "cannot start a worker thread (out of memory)")
        if isinstance(leaf, OSError) and leaf.errno in SHORTAGE_ERRNOS:
            return OSError(leaf.errno, leaf.strerror or errno.errorcode[leaf.errno])
    return None


def only_shortage(exc: BaseException) -> OSError | None:
    """Like :func:`shortage`, but None unless every error inside ``exc`` is a shortage:
    a group that also holds a real failure is that failure."""
    found = [shortage(leaf) for leaf in leaves(exc)]
    if not found or any(f is None for f in found):
        return None
    return found[0]


def describe(exc: BaseException) -> str:
    """``exc`` for a log line (the one implementation): an OSError as its message and the
    errno's name (``No space left on device (errno=ENOSPC)``), anything else with its type;
    an exception group reads as the errors inside it."""
    inside = leaves(exc)
    if len(inside) > 1:
        return "; ".join(describe(leaf) for leaf in inside)
    exc = inside[0]
    if isinstance(exc, OSError):
        if exc.errno is None:
            return str(exc)
        return f"{exc.strerror or exc} (errno={errno.errorcode.get(exc.errno, exc.errno)})"
    return f"{type(exc).__name__}: {exc}"


def leaves(exc: BaseException) -> list[BaseException]:
    """The errors inside ``exc``, exception groups flattened (``exc`` itself if none)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]
