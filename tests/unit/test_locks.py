"""Layer 1: the one flock implementation (musicfs/locks.py) behind the state-dir, cache
and search-index locks. flock conflicts between open files, so two locks in one process
stand for two processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from musicfs.locks import FileLock, LockHeld, is_held


def test_a_second_holder_is_refused_and_told_the_first_ones_pid(tmp_path: Path) -> None:
    first, second = FileLock(tmp_path / "lock"), FileLock(tmp_path / "lock")
    first.acquire()
    assert is_held(tmp_path / "lock")
    with pytest.raises(LockHeld) as refused:
        second.acquire()
    assert refused.value.holder == str(os.getpid())
    assert not second.try_acquire() and not second.held
    first.release()
    assert not is_held(tmp_path / "lock")
    assert second.try_acquire() and second.held
    second.release()


def test_a_timeout_waits_for_the_holder_then_gives_up(tmp_path: Path) -> None:
    first, second = FileLock(tmp_path / "lock"), FileLock(tmp_path / "lock")
    first.acquire()
    started = time.monotonic()
    assert not second.try_acquire(timeout=0.2)
    assert time.monotonic() - started >= 0.2
    first.release()


def test_a_read_only_lock_never_writes_and_needs_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FileLock(tmp_path / "lock", writable=False).acquire()
    (tmp_path / "lock").write_text("1234\n")
    ro = FileLock(tmp_path / "lock", writable=False)
    ro.acquire()
    assert (tmp_path / "lock").read_text() == "1234\n"
    with pytest.raises(LockHeld) as refused:
        FileLock(tmp_path / "lock").acquire()
    assert refused.value.holder == "1234"
    ro.release()


def test_parents_are_made_only_when_asked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FileLock(tmp_path / "a" / "lock").acquire()
    lock = FileLock(tmp_path / "a" / "lock", make_parents=True)
    lock.acquire()
    assert lock.held
    lock.release()


def test_nobody_holds_a_lock_file_that_does_not_exist(tmp_path: Path) -> None:
    assert not is_held(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
