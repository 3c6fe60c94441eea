"""Recognising a shortage of memory, threads or descriptors in any of its shapes."""

from __future__ import annotations

import errno

from musicfs.resources import describe, only_shortage, shortage


def test_each_shape_of_a_shortage_gets_an_errno() -> None:
    assert shortage(MemoryError()).errno == errno.ENOMEM  # type: ignore[union-attr]
    thread = shortage(RuntimeError("can't start new thread"))
    assert thread is not None and thread.errno == errno.ENOMEM
    assert "worker thread" in str(thread.strerror)
    emfile = shortage(OSError(errno.EMFILE, "Too many open files"))
    assert emfile is not None and emfile.errno == errno.EMFILE
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [MemoryError()])])
    assert shortage(nested) is not None


def test_other_errors_are_not_shortages() -> None:
    assert shortage(RuntimeError("something else")) is None
    assert shortage(OSError(errno.EIO, "I/O error")) is None
    assert shortage(ValueError("bad")) is None


def test_a_group_is_only_a_shortage_if_every_error_in_it_is() -> None:
    assert only_shortage(ExceptionGroup("g", [MemoryError(), OSError(errno.ENFILE, "x")]))
    mixed = ExceptionGroup("g", [MemoryError(), KeyError("bug")])
    assert shortage(mixed) is not None
    assert only_shortage(mixed) is None


def test_a_group_is_described_by_what_is_inside_it() -> None:
    group = ExceptionGroup("Exceptions from Trio nursery", [KeyError("k")])
    assert describe(group) == "KeyError: 'k'"
    two = ExceptionGroup("g", [ValueError("a"), OSError(errno.EIO, "b")])
    assert describe(two) == "ValueError: a; b (errno=EIO)"
