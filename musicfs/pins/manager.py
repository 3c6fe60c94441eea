"""The pin manager: applies the pins (``pins/selection.py``) to the chunk cache and fetches them.

* **Never evicted.** Every stored chunk of a pinned track carries a pin count in the cache
  index (``ChunkStore.set_pinned``), which eviction skips. The catalog is the pins' truth,
  so a rebuilt cache index gets its pins back at the next evaluation (start-up, every
  sync, every pin or unpin).
* **Fetched like any read.** Missing chunks go through the reader (``CachingReader.warm``):
  verified, stored behind, shared with a player reading the same chunk. Fetching is
  resumable by construction -- what is missing is asked of the store each pass.
* **A player comes first.** While the mount serves reads, pins fetch one chunk at a time
  (``parallel`` when it is idle), and never faster than ``max_rate`` bytes per second;
  a failing origin pauses fetching with backoff instead of hammering it.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from musicfs.backoff import backoff_delay
from musicfs.cache.modes import CacheMode
from musicfs.cache.store import ChunkStore
from musicfs.catalog.db import Catalog
from musicfs.catalog.model import Track
from musicfs.catalog.tree import TreeView
from musicfs.pins.selection import (
    Pin,
    PinError,
    PinPlan,
    PinRefused,
    PinSettings,
    PinSpec,
    SearchPaths,
    check_room,
    mib,
    plan,
    resolve,
)
from musicfs.search import QueryError, SearchUnavailable

log = logging.getLogger(__name__)

Warm = Callable[[Track, int], Awaitable[None]]
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
ChunkKey = tuple[bytes, int]
FAILURES_PER_PASS = 3  # consecutive failed chunks that pause a pass (the origin is down)
PASSTHROUGH_RECHECK = 30.0  # seconds between looks at an unusable cache
SETTLE_TIME = 2.0  # how long fetched chunks may take to reach the store after a pass


class Pacer:
    """Spaces out starts so that ``rate`` bytes per second are not exceeded on average."""

    def __init__(self, rate: int):
        self.rate = rate
        self._next = 0.0

    async def take(self, size: int) -> None:
        if self.rate <= 0:
            return
        now = trio.current_time()
        start = max(self._next, now)
        self._next = start + size / self.rate
        await trio.sleep_until(start)


class PinManager:
    def __init__(
        self,
        catalog: Catalog,
        store: ChunkStore,
        warm: Warm,
        settings: PinSettings,
        *,
        tree: Callable[[], TreeView],
        search: SearchPaths,
        busy: Callable[[], bool] = lambda: False,
    ):
        self.catalog = catalog
        self.store = store
        self.warm = warm
        self.settings = settings
        self.tree = tree
        self.search = search
        self.busy = busy
        self.pins: list[Pin] = []
        self.plan = PinPlan(0)
        self._lock = trio.Lock()
        self._stored: set[ChunkKey] = set()  # stored at the last look at the store
        self._fetched: set[ChunkKey] = set()  # fetched since (queued for the store)
        self._changed = trio.Event()
        self._generation = 0
        self._failures = 0  # consecutive chunks that failed in the current pass
        self.last_error: str | None = None
        self.fetching = False
        self.fetched_bytes = 0
        self._pass_started = 0.0
        self._pass_bytes = 0

    # -- evaluating ------------------------------------------------------------------

    async def evaluate(self) -> None:
        """Work out again which tracks the pins hold (after a sync, at start-up) and pin
        their stored chunks; wakes the fetcher."""
        async with self._lock:
            await self._evaluate_locked()

    def _resolve_all(self, pins: list[Pin], tree: TreeView) -> list[tuple[Pin, list[Track]]]:
        matches = []
        for pin in pins:
            try:
                tracks = resolve(pin.spec, tree, self.search)
            except (QueryError, SearchUnavailable, OSError, ValueError) as exc:
                log.warning(
                    "pins: pin %d %r cannot be evaluated now (%s)", pin.id, pin.spec.text, exc
                )
                tracks = self.plan.by_pin.get(pin.id, [])  # keep what it held
            matches.append((pin, tracks))
        return matches

    async def _evaluate_locked(self) -> None:
        rows = await self.catalog.run(self.catalog.pins)
        pins = [Pin(i, PinSpec(kind, text), created) for i, kind, text, created in rows]
        capacity = await trio.to_thread.run_sync(self.store.budget)
        matches = await trio.to_thread.run_sync(self._resolve_all, pins, self.tree())
        new = plan(matches, capacity)
        for pin in pins:
            left = new.left_out.get(pin.id, 0)
            if left and left != self.plan.left_out.get(pin.id):
                log.warning(
                    "pins: pin %d %r matches %d tracks; %d of them do not fit in the cache "
                    "(%s pinned of %s) and are not pinned",
                    pin.id,
                    pin.spec.text,
                    len(new.by_pin[pin.id]),
                    left,
                    mib(new.bytes),
                    mib(capacity),
                )
        self.pins, self.plan = pins, new
        await self._look_at_store()
        self._generation += 1
        self._changed.set()

    async def _look_at_store(self) -> None:
        chunks = [(t.version_key, n) for t, n in self.plan.chunks(self.store.chunk_size)]
        self._stored = await trio.to_thread.run_sync(self.store.set_pinned, chunks)
        self._fetched.clear()

    # -- pin, unpin ------------------------------------------------------------------

    async def add(self, spec: PinSpec) -> dict[str, Any]:
        """Store a pin and start fetching it; ``PinRefused`` if it would not fit."""
        async with self._lock:
            try:
                tracks = await trio.to_thread.run_sync(resolve, spec, self.tree(), self.search)
            except QueryError as exc:
                raise PinError(str(exc)) from None
            except SearchUnavailable as exc:
                raise PinError(f"cannot search now ({exc})") from None
            if not tracks:
                raise PinError(f"{spec.label()!r} matches no track")
            self.plan.capacity = await trio.to_thread.run_sync(self.store.budget)
            check_room(self.plan, spec, tracks, self._cache_note())
            pin_id, new = await self.catalog.run(self.catalog.add_pin, spec.kind, spec.text)
            log.info(
                "pins: %s pin %d %r: %d tracks, %s",
                "added" if new else "kept",
                pin_id,
                spec.text,
                len(tracks),
                mib(sum(t.size for t in tracks)),
            )
            await self._evaluate_locked()
            return self.pin_status(pin_id)

    async def remove(self, spec: PinSpec) -> None:
        async with self._lock:
            if not await self.catalog.run(self.catalog.remove_pin, spec.kind, spec.text):
                known = ", ".join(repr(p.spec.text) for p in self.pins) or "none"
                raise PinError(f"no pin {spec.text!r} (pins: {known})")
            log.info("pins: removed %r", spec.text)
            await self._evaluate_locked()

    def _cache_note(self) -> str:
        if self.plan.capacity >= self.store.max_size:
            return f"cache.max_size {mib(self.store.max_size)}"
        return (
            f"cache.max_size {mib(self.store.max_size)}, less what cache.min_free "
            f"{mib(self.store.min_free)} needs on the cache disk"
        )

    # -- status ----------------------------------------------------------------------

    def _cached_bytes(self, track: Track) -> int:
        cs = self.store.chunk_size
        version = track.version_key
        total = 0
        for n in range((track.size + cs - 1) // cs):
            if (version, n) in self._stored or (version, n) in self._fetched:
                total += min(cs, track.size - n * cs)
        return total

    def _complete(self, track: Track) -> bool:
        cs = self.store.chunk_size
        v = track.version_key
        return all((v, n) in self._stored for n in range((track.size + cs - 1) // cs))

    def pin_status(self, pin_id: int) -> dict[str, Any]:
        pin = next((p for p in self.pins if p.id == pin_id), None)
        if pin is None:
            raise PinError(f"no pin {pin_id}")
        tracks = self.plan.by_pin.get(pin_id, [])
        held = [t for t in tracks if t.version_key in self.plan.tracks]
        return {
            "id": pin.id,
            "kind": pin.spec.kind,
            "query": pin.spec.text,
            "created_at": pin.created_at,
            "tracks": len(tracks),
            "bytes": sum(t.size for t in tracks),
            "cached_bytes": sum(self._cached_bytes(t) for t in held),
            "left_out": self.plan.left_out.get(pin_id, 0),
            # Every held chunk seen in the store (not just fetched and queued for it).
            "complete": all(self._complete(t) for t in held),
        }

    def status(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self._pass_started
        return {
            "catalog": str(self.catalog.path),  # whose pins these are
            "pins": [self.pin_status(p.id) for p in self.pins],
            "tracks": len(self.plan.tracks),
            "bytes": self.plan.bytes,
            "cached_bytes": sum(self._cached_bytes(t) for t in self.plan.tracks.values()),
            "capacity": self.plan.capacity,
            "fetching": self.fetching,
            "rate": round(self._pass_bytes / elapsed) if self.fetching and elapsed > 0 else 0,
            "fetched_bytes": self.fetched_bytes,
            "last_error": self.last_error,
        }

    # -- fetching --------------------------------------------------------------------

    def _missing(self) -> list[tuple[Track, int]]:
        return [
            (t, n)
            for t, n in self.plan.chunks(self.store.chunk_size)
            if (t.version_key, n) not in self._stored and (t.version_key, n) not in self._fetched
        ]

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Fetch whatever the pins hold that the cache lacks, for as long as it runs."""
        await self.evaluate()  # puts pins back into a rebuilt cache index, too
        task_status.started()
        failures = 0
        while True:
            missing = self._missing()
            if not missing:
                failures = 0
                await self._changed.wait()
                self._changed = trio.Event()
                continue
            generation = self._generation
            self._changed = trio.Event()
            if self.store.mode == CacheMode.PASSTHROUGH:
                # Nothing fetched now could be kept: wait for the cache to come back.
                self.last_error = f"the cache is unusable ({self.store.reason}); waiting"
                with trio.move_on_after(PASSTHROUGH_RECHECK):
                    await self._changed.wait()
                async with self._lock:
                    await self._look_at_store()
                continue
            errors = await self._fetch_pass(missing, generation)
            await self._settle(generation)
            if generation != self._generation or not self._missing():
                if generation == self._generation:
                    log.info("pins: all %d pinned tracks are cached", len(self.plan.tracks))
                    self.last_error = None
                failures = 0
                continue
            # Chunks failed, or were fetched but are still on their way to the store.
            failures += 1
            delay = backoff_delay(failures, 0.5, 60.0)
            if errors:
                log.warning(
                    "pins: fetching paused: %s; %d chunks still missing, retrying in %.1fs",
                    self.last_error,
                    len(self._missing()),
                    delay,
                )
            with trio.move_on_after(delay):
                await self._changed.wait()
            self._changed.set()

    async def _settle(self, generation: int) -> None:
        """Look at the store once what was fetched has been written (the reader stores
        behind the read: the last chunks of a pass may still be on their way)."""
        fetched = set(self._fetched)
        with trio.move_on_after(SETTLE_TIME):
            while True:
                async with self._lock:
                    if generation != self._generation:
                        return
                    await self._look_at_store()
                if fetched <= self._stored:
                    return
                await trio.sleep(0.05)

    async def _fetch_pass(self, missing: list[tuple[Track, int]], generation: int) -> int:
        """Fetch ``missing`` in order until done, the pins change or the origin fails;
        returns how many chunks failed."""
        limiter = trio.CapacityLimiter(max(1, self.settings.parallel))
        pacer = Pacer(self.settings.max_rate)
        self.fetching = True
        self._pass_started, self._pass_bytes = time.monotonic(), 0
        self._failures = 0
        errors = 0

        async def one(track: Track, n: int, borrower: object) -> None:
            nonlocal errors
            try:
                await self.warm(track, n)
            except OSError as exc:
                errors += 1
                self._failures += 1
                name = errno.errorcode.get(exc.errno or errno.EIO, "EIO")
                self.last_error = f"{track.path!r} chunk {n}: {exc.strerror or exc}, errno={name}"
            else:
                self._failures = 0
                size = min(self.store.chunk_size, track.size - n * self.store.chunk_size)
                self._fetched.add((track.version_key, n))
                self.fetched_bytes += size
                self._pass_bytes += size
            finally:
                limiter.release_on_behalf_of(borrower)

        try:
            async with trio.open_nursery() as nursery:
                for track, n in missing:
                    if generation != self._generation or self._failures >= FAILURES_PER_PASS:
                        break
                    limiter.total_tokens = 1 if self.busy() else max(1, self.settings.parallel)
                    borrower = object()
                    await limiter.acquire_on_behalf_of(borrower)
                    await pacer.take(
                        min(self.store.chunk_size, track.size - n * self.store.chunk_size)
                    )
                    nursery.start_soon(one, track, n, borrower)
        finally:
            self.fetching = False
        return errors


def control_handlers(
    manager: PinManager,
) -> dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]:
    """``pin``, ``unpin`` and ``pins`` on the control socket (``musicfs pin`` & co)."""

    def spec_of(request: dict[str, Any]) -> PinSpec:
        kind, text = request.get("kind"), request.get("text")
        if not isinstance(kind, str) or not isinstance(text, str):
            raise PinError("expected a pin kind and text")
        return PinSpec(kind, text)

    async def pin(request: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"pin": await manager.add(spec_of(request))}
        except PinError as exc:
            return {"ok": False, "error": str(exc), "refused": isinstance(exc, PinRefused)}

    async def unpin(request: dict[str, Any]) -> dict[str, Any]:
        try:
            await manager.remove(spec_of(request))
        except PinError as exc:
            return {"ok": False, "error": str(exc)}
        return {"removed": True}

    async def pins(request: dict[str, Any]) -> dict[str, Any]:
        return {"pins": manager.status()}

    return {"pin": pin, "unpin": unpin, "pins": pins}
