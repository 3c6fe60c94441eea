"""Origins for layer-1 tests: ``MemoryOrigin`` (files in a dict, pure trio, so tests may
use a virtual clock) and ``FaultyOrigin``, which wraps any origin and injects faults that
can be switched while a test runs."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from musicfs.catalog.model import Source, Track
from musicfs.catalog.tags import Tags
from musicfs.origins.base import Listing, Origin, OriginEntry, OriginError

ALL_OPS = frozenset({"list", "stat", "read", "check"})


class MemoryOrigin:
    def __init__(self, name: str, files: dict[str, bytes] | None = None):
        self._name = name
        self.files = dict(files or {})
        self.mtime_ns = 1_000_000_000

    @property
    def name(self) -> str:
        return self._name

    @property
    def display_url(self) -> str:
        return f"memory://{self._name}"

    async def list(self) -> Listing:
        await trio.lowlevel.checkpoint()
        return Listing([OriginEntry(p, len(d), self.mtime_ns) for p, d in self.files.items()])

    async def stat(self, path: str) -> OriginEntry:
        await trio.lowlevel.checkpoint()
        if path not in self.files:
            raise OriginError(errno.ENOENT, "no such file", origin=self._name, path=path)
        return OriginEntry(path, len(self.files[path]), self.mtime_ns)

    async def read(self, path: str, offset: int, length: int) -> bytes:
        await trio.lowlevel.checkpoint()
        if path not in self.files:
            raise OriginError(errno.ENOENT, "no such file", origin=self._name, path=path)
        return self.files[path][offset : offset + length]

    async def check(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        return None


@dataclass(frozen=True)
class FaultMode:
    """What ``FaultyOrigin`` does to the operations in ``ops``.

    kind: ``healthy`` | ``fail_every_nth`` (n) | ``fail_after`` (n good calls, then fail) |
    ``hang`` | ``slow`` (delay seconds, then answer) | ``partial`` (at most n bytes per read)
    | ``error`` (always fail). Failures raise ``OriginError(err)``.
    """

    kind: str = "healthy"
    n: int = 0
    delay: float = 0.0
    err: int = errno.EIO
    ops: frozenset[str] = ALL_OPS


HEALTHY = FaultMode()


def fail_every_nth(n: int, err: int = errno.EIO, ops: Iterable[str] = ALL_OPS) -> FaultMode:
    return FaultMode("fail_every_nth", n=n, err=err, ops=frozenset(ops))


def fail_after(n: int, err: int = errno.EIO, ops: Iterable[str] = ALL_OPS) -> FaultMode:
    return FaultMode("fail_after", n=n, err=err, ops=frozenset(ops))


def hang(ops: Iterable[str] = ALL_OPS) -> FaultMode:
    return FaultMode("hang", ops=frozenset(ops))


def slow(delay: float, ops: Iterable[str] = ALL_OPS) -> FaultMode:
    return FaultMode("slow", delay=delay, ops=frozenset(ops))


def partial(max_bytes: int) -> FaultMode:
    return FaultMode("partial", n=max_bytes, ops=frozenset({"read"}))


def error(err: int, ops: Iterable[str] = ALL_OPS) -> FaultMode:
    return FaultMode("error", err=err, ops=frozenset(ops))


@dataclass
class Calls:
    by_op: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    inflight: int = 0

    def __getitem__(self, op: str) -> int:
        return self.by_op.get(op, 0)


class FaultyOrigin:
    def __init__(self, inner: Origin, mode: FaultMode = HEALTHY, *, name: str | None = None):
        self.inner = inner
        self._name = name or inner.name
        self.mode = mode
        self.calls = Calls()
        self._counted = 0  # calls seen by the current mode (reset on set_mode)

    def set_mode(self, mode: FaultMode) -> None:
        """Switch behaviour at run time; affects calls that start from now on."""
        self.mode = mode
        self._counted = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def display_url(self) -> str:
        return f"faulty+{self.inner.display_url}"

    async def _enter(self, op: str, path: str | None) -> FaultMode:
        self.calls.by_op[op] = self.calls[op] + 1
        mode = self.mode
        if op not in mode.ops or mode.kind in ("healthy", "partial"):
            return mode
        self._counted += 1
        fail = False
        if mode.kind == "fail_every_nth":
            fail = self._counted % mode.n == 0
        elif mode.kind == "fail_after":
            fail = self._counted > mode.n
        elif mode.kind == "error":
            fail = True
        elif mode.kind == "hang":
            await trio.sleep_forever()
        elif mode.kind == "slow":
            await trio.sleep(mode.delay)
        if fail:
            self.calls.failed += 1
            raise OriginError(
                mode.err, f"injected {os.strerror(mode.err)}", origin=self._name, path=path
            )
        return mode

    async def list(self) -> Listing:
        await self._enter("list", None)
        return await self.inner.list()

    async def stat(self, path: str) -> OriginEntry:
        await self._enter("stat", path)
        return await self.inner.stat(path)

    async def read(self, path: str, offset: int, length: int) -> bytes:
        self.calls.inflight += 1
        try:
            mode = await self._enter("read", path)
            if mode.kind == "partial" and "read" in mode.ops:
                length = min(length, mode.n)
            return await self.inner.read(path, offset, length)
        finally:
            self.calls.inflight -= 1

    async def check(self) -> None:
        await self._enter("check", None)
        await self.inner.check()

    async def aclose(self) -> None:
        await self.inner.aclose()


def track_on(path: str, data: bytes, *origins: str) -> Track:
    """A catalogued track that every origin in ``origins`` holds."""
    return Track(
        id=1,
        path=path,
        size=len(data),
        mtime_ns=1_000_000_000,
        etag=None,
        tags=Tags(),
        sources=tuple(Source(o, len(data), 1_000_000_000, None) for o in origins),
    )
