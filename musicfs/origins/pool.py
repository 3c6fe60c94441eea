"""The configured origins in priority order, their health, and the one fetch path every
reader uses: ``OriginPool.read``.

A read goes to the best origin that holds the track's version and can serve now (healthy
before degraded, then priority), is bounded per attempt by the operation timeout, fails
over to the next origin, and retries with exponential backoff and jitter -- all inside the
request's deadline (the caller's trio deadline or ``read_deadline``, whichever is sooner).
A read may switch origins mid-range: bytes are the same on every origin that holds the
version, and the cache verifies what it stores. An origin that is slow to answer is
hedged: after ``hedge_after`` the next holder is asked as well and the first answer wins,
so losing the primary costs a player about a second, not a whole operation timeout. When
no origin can serve (offline mode) the read fails at once with EIO instead of waiting.

Attempts already waiting on an origin when it is declared unhealthy are not left to run
out their whole operation timeout: they get at most ``hedge_after`` more, then fail over
or answer EIO. Each waiting read holds one of the kernel's FUSE request slots and a worker;
a known-down origin must not keep them.
"""

from __future__ import annotations

import errno
import logging
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from musicfs.backoff import backoff_delay
from musicfs.catalog.model import Track
from musicfs.origins.base import Origin, OriginError
from musicfs.origins.health import (
    HealthMonitor,
    HealthPolicy,
    Mode,
    State,
    is_origin_failure,
)
from musicfs.statistics import snapshot

log = logging.getLogger(__name__)

_STATE_RANK = {State.HEALTHY: 0, State.DEGRADED: 1, State.UNHEALTHY: 2}


@dataclass
class PoolCounters:
    reads: int = 0
    failovers: int = 0  # reads (or the rest of one) served by another origin
    retries: int = 0  # rounds started again after every origin failed once
    offline_fast_fails: int = 0  # reads failed at once: no origin could serve them
    abandoned_on_unhealthy: int = 0  # attempts given up when their origin went unhealthy


@dataclass(frozen=True)
class PoolStatistics:
    mode: Mode
    counters: PoolCounters


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 0.05  # first backoff after every origin failed once
    cap: float = 1.0  # longest backoff between rounds
    # An origin that has not answered within this is not waited for alone: the next
    # origin holding the track is asked too and the first answer wins (a hedged read).
    # Without a second holder nothing changes -- a slow origin is simply waited for.
    hedge_after: float = 1.0
    # Stop starting attempts this long before the deadline, so the caller gets our
    # error (which names the origins) rather than a bare timeout.
    margin: float = 0.05


@dataclass
class _Request:
    """What one ``OriginPool.read`` has learned so far."""

    track: Track
    end: float  # trio clock: no attempt starts or runs past this
    # Origins that refused this file for a file-specific reason (gone, shrunk,
    # permission): no point asking them again for this request.
    refused: dict[str, OriginError] = field(default_factory=dict)
    last: OriginError | None = None


class OriginPool:
    def __init__(
        self,
        origins: Sequence[Origin],
        *,
        health: HealthPolicy | None = None,
        read_deadline: float = 8.0,
        operation_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
    ):
        # Earlier in the list is preferred.
        self.origins = list(origins)
        self._by_name = {o.name: o for o in self.origins}
        self._rank = {o.name: i for i, o in enumerate(self.origins)}
        self.health = HealthMonitor(self.origins, health)
        self.read_deadline = read_deadline
        self.operation_timeout = operation_timeout
        self.retry = retry or RetryPolicy()
        self._rng = random.Random()
        self.counters = PoolCounters()
        self._offline_logged: dict[str, float] = {}
        # The deadline scope of every attempt waiting on each origin, with the deadline it
        # started with (so that a shortened one can be told from a plain timeout).
        self._waiting: dict[str, dict[trio.CancelScope, float]] = {o.name: {} for o in self.origins}
        self.health.on_state_change(self._state_changed)

    def __iter__(self) -> Iterator[Origin]:
        return iter(self.origins)

    def __len__(self) -> int:
        return len(self.origins)

    def get(self, name: str) -> Origin | None:
        return self._by_name.get(name)

    @property
    def mode(self) -> Mode:
        return self.health.mode

    def candidates(self, track: Track) -> list[Origin]:
        """Origins holding this exact version of ``track``, best first (health, then
        priority). Unhealthy origins are left out."""
        names = {s.origin for s in track.sources if s.size == track.size}
        held = [o for o in self.origins if o.name in names]
        usable = [o for o in held if self.health.usable(o.name)]
        return sorted(
            usable, key=lambda o: (_STATE_RANK[self.health.state(o.name)], self._rank[o.name])
        )

    def _holders(self, track: Track) -> list[Origin]:
        names = {s.origin for s in track.sources if s.size == track.size}
        return [o for o in self.origins if o.name in names]

    def _deadline(self, deadline: float | None) -> float:
        now = trio.current_time()
        own = now + self.read_deadline if deadline is None else deadline
        return min(own, trio.current_effective_deadline())

    async def read(
        self, track: Track, offset: int, length: int, *, deadline: float | None = None
    ) -> bytes:
        """Bytes ``[offset, offset+length)`` of ``track`` (short only at its end).

        Raises ``OriginError``: EIO when offline or out of time, the origin's errno (for
        example EACCES) when every holder refused the file itself.
        """
        self.counters.reads += 1
        want = min(length, max(0, track.size - offset))
        if want <= 0:
            return b""
        holders = self._holders(track)
        if not holders:
            raise OriginError(
                errno.EIO, "no configured origin holds this track", origin="-", path=track.path
            )
        end = self._deadline(deadline) - self.retry.margin
        req = _Request(track, end)
        parts: list[bytes] = []
        pos, remaining = offset, want
        rounds = 0
        previous: str | None = None
        while remaining > 0:
            order = [o for o in self.candidates(track) if o.name not in req.refused]
            if not order:
                raise self._nothing_to_ask(track, holders, req.refused, req.last)
            won = await self._race(req, order, pos, remaining)
            if won is not None:
                origin, data = won
                if origin.name != (previous or order[0].name):
                    self.counters.failovers += 1
                    log.info(
                        "read: path=%r offset=%d: switching origin %s -> %s",
                        track.path,
                        pos,
                        previous or order[0].name,
                        origin.name,
                    )
                previous = origin.name
                parts.append(data)
                pos += len(data)
                remaining -= len(data)
                continue  # the rest (after a short read) starts again from the best origin
            if trio.current_time() >= end:
                raise self._out_of_time(track, want - remaining, req.last)
            rounds += 1
            self.counters.retries += 1
            delay = backoff_delay(rounds, self.retry.base, self.retry.cap, self._rng)
            await trio.sleep(min(delay, max(0.0, end - trio.current_time())))
        return b"".join(parts)

    async def _race(
        self, req: _Request, order: list[Origin], pos: int, length: int
    ) -> tuple[Origin, bytes] | None:
        """Ask ``order[0]``; if it has not answered within ``hedge_after`` (or failed), ask
        the next one too, and so on. The first origin to deliver wins and the others are
        cancelled. None if every attempt failed."""
        won: tuple[Origin, bytes] | None = None
        running: dict[str, float] = {}  # origin -> when its attempt started
        outrun: list[str] = []  # attempts the winner beat by more than hedge_after
        finished = trio.Event()

        async def attempt(origin: Origin) -> None:
            nonlocal won
            running[origin.name] = trio.current_time()
            try:
                data = await self._attempt(req, origin, pos, length)
            finally:
                running.pop(origin.name, None)
                finished.set()
            if data is not None and won is None:
                won = (origin, data)
                now = trio.current_time()
                outrun.extend(n for n, t in running.items() if now - t >= self.retry.hedge_after)
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for i, origin in enumerate(order):
                if trio.current_time() >= req.end:
                    break
                finished = trio.Event()
                nursery.start_soon(attempt, origin)
                if i + 1 < len(order):
                    # Wait until this attempt is done or slow enough to hedge.
                    with trio.move_on_after(self.retry.hedge_after):
                        await finished.wait()
                    if won is not None:
                        break
        if won is not None:
            winner, _ = won
            for name in outrun:
                # It lost by more than the hedge delay: prefer the winner from now on.
                self.health.record_failure(
                    name,
                    OriginError(
                        errno.ETIMEDOUT,
                        f"slower than {winner.name} by over {self.retry.hedge_after:g}s",
                        origin=name,
                        path=req.track.path,
                    ),
                )
            self.health.record_success(winner.name)
        return won

    def _state_changed(self, name: str, state: State) -> None:
        """An origin declared unhealthy: its waiting attempts get ``hedge_after`` more."""
        waiting = self._waiting.get(name)
        if state is not State.UNHEALTHY or not waiting:
            return
        cut = trio.current_time() + self.retry.hedge_after
        shortened = 0
        for scope in waiting:
            if scope.deadline > cut:
                scope.deadline = cut
                shortened += 1
        if shortened:
            log.warning(
                "read: origin=%s declared unhealthy; %d waiting reads get %.1fs more, then "
                "fail over or answer EIO",
                name,
                shortened,
                self.retry.hedge_after,
            )

    async def _attempt(self, req: _Request, origin: Origin, pos: int, length: int) -> bytes | None:
        """One bounded read from one origin: its bytes, or None after recording why not."""
        limit = min(self.operation_timeout, req.end - trio.current_time())
        if limit <= 0:
            return None
        track = req.track
        started = trio.current_time()
        scope = trio.CancelScope(deadline=started + limit)
        waiting = self._waiting.setdefault(origin.name, {})
        waiting[scope] = scope.deadline
        try:
            with scope:
                data = await origin.read(track.path, pos, length)
        except OriginError as exc:
            req.last = exc
            if is_origin_failure(exc):
                self._failed(origin, exc, pos)
            else:
                req.refused[origin.name] = exc
                log.warning("read: %s offset=%d", exc, pos)
            return None
        finally:
            own_deadline = waiting.pop(scope)
        if scope.cancelled_caught:
            took = trio.current_time() - started
            if scope.deadline < own_deadline:
                # The verdict is known (and logged once): no new failure to record.
                self.counters.abandoned_on_unhealthy += 1
                req.last = OriginError(
                    errno.ETIMEDOUT,
                    f"no data after {took:.2f}s, abandoned: the origin was declared unhealthy",
                    origin=origin.name,
                    path=track.path,
                )
                return None
            req.last = OriginError(
                errno.ETIMEDOUT, f"no data within {limit:.2f}s", origin=origin.name, path=track.path
            )
            self._failed(origin, req.last, pos)
            return None
        if not data:
            # The catalogued version is longer than what the origin has now: the file
            # shrank or was replaced since the last sync.
            req.last = OriginError(
                errno.EIO,
                f"file ends at {pos} but the catalogued version has {track.size} bytes "
                "(changed since the last sync)",
                origin=origin.name,
                path=track.path,
            )
            req.refused[origin.name] = req.last
            log.warning("read: %s", req.last)
            return None
        return data[:length]

    def _failed(self, origin: Origin, exc: OriginError, pos: int) -> None:
        log.warning("read: %s offset=%d", exc, pos)
        self.health.record_failure(origin.name, exc)

    def _nothing_to_ask(
        self,
        track: Track,
        holders: list[Origin],
        refused: dict[str, OriginError],
        last: OriginError | None,
    ) -> OriginError:
        if refused and len(refused) == len(holders):
            # Every holder refused the file itself: pass on the most telling errno.
            for err in (errno.EACCES, errno.EPERM):
                for exc in refused.values():
                    if exc.errno == err:
                        return exc
            return next(iter(refused.values()))
        if last is not None:
            return last
        # Offline: every holder is unhealthy. Fail fast and ask for an early re-check.
        self.counters.offline_fast_fails += 1
        self.health.nudge()
        exc = OriginError(
            errno.EIO,
            "offline: no origin holding this track is healthy (cached data only)",
            origin=",".join(o.name for o in holders),
            path=track.path,
        )
        now = trio.current_time()
        if now - self._offline_logged.get(track.path, -math.inf) >= 30.0:
            # One line per track per 30 s: a player retrying in a loop must not flood logs.
            self._offline_logged[track.path] = now
            if len(self._offline_logged) > 10_000:
                self._offline_logged.clear()
            log.warning("read: %s", exc)
        return exc

    def _out_of_time(self, track: Track, got: int, last: OriginError | None) -> OriginError:
        why = f"; last error: {last}" if last is not None else ""
        return OriginError(
            errno.EIO,
            f"no origin delivered the data within the read deadline ({got} bytes read){why}",
            origin=last.origin if last is not None else "-",
            path=track.path,
        )

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(mode=self.mode, counters=snapshot(self.counters))

    def status(self) -> dict[str, Any]:
        """Mode, per-origin health and read counters, for ``musicfs status``."""
        out = self.health.status()
        out["reads"] = asdict(self.statistics().counters)
        return out

    async def aclose(self) -> None:
        for origin in self.origins:
            with trio.move_on_after(self.operation_timeout):
                await origin.aclose()
