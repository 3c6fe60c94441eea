"""Origin health: periodic checks, a healthy/degraded/unhealthy verdict with hysteresis, and
the library's mode (online / degraded / offline) derived from it.

Every origin is watched by its own task, so a hanging origin delays nobody else's verdict;
each check is bounded by ``check_timeout``. Reads through the pool report their outcome
here too, so a blackholed origin is noticed by the first read that times out instead of at
the next check. A failing origin is re-checked with exponential backoff (never more often
than ``interval``, never less often than ``max_backoff``), and a read that finds the
library offline may "nudge" an early check -- still at most once per ``interval``.
"""

from __future__ import annotations

import enum
import errno
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from musicfs.backoff import backoff_delay
from musicfs.failpoints import async_fail_point
from musicfs.origins.base import Origin, OriginError
from musicfs.resources import SHORTAGE_ERRNOS

log = logging.getLogger(__name__)


class State(enum.Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"  # recently failed or recovering: used, but after healthy ones
    UNHEALTHY = "unhealthy"  # not used for reads until a check succeeds


class Mode(enum.Enum):
    ONLINE = "online"  # every origin healthy
    DEGRADED = "degraded"  # some origin can serve, not all are healthy
    OFFLINE = "offline"  # no origin can serve: cached data only, the rest fails fast


# Errors that describe one file, not the origin: they must not mark a server unhealthy.
FILE_ERRNOS = frozenset(
    {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.EINVAL, errno.ESTALE}
)


def is_origin_failure(exc: BaseException) -> bool:
    """True if ``exc`` says the origin (not one file on it, nor this process) is in trouble."""
    if isinstance(exc, OriginError) and exc.origin_wide:
        return True
    # Nor does this process running out of descriptors or memory: that request fails (EIO),
    # but marking the origin unhealthy would turn one busy moment into offline.
    return not (isinstance(exc, OSError) and exc.errno in FILE_ERRNOS | SHORTAGE_ERRNOS)


@dataclass(frozen=True)
class HealthPolicy:
    interval: float = 10.0  # between checks of a healthy origin
    check_timeout: float = 5.0  # one check; no answer in time is a failure
    max_backoff: float = 60.0  # longest wait between checks of a failing origin
    fail_threshold: int = 3  # consecutive failures that make an origin unhealthy
    recover_threshold: int = 2  # consecutive successes that make it healthy again
    # While reads are waiting on a failing origin it is checked this often at most (or at
    # ``interval``, if shorter), however far its backoff has grown: a network blip costs a
    # player seconds of skipped tracks, not a whole health interval.
    nudge_interval: float = 2.0


@dataclass
class OriginHealth:
    name: str
    display_url: str
    state: State = State.HEALTHY
    failures: int = 0  # consecutive
    successes: int = 0  # consecutive
    last_error: str | None = None
    last_check: float | None = None  # trio clock
    last_check_wall: float | None = None
    latency: float | None = None  # of the last successful check
    next_check: float = 0.0  # trio clock
    checks: int = 0
    in_check: bool = False


class HealthMonitor:
    def __init__(self, origins: Sequence[Origin], policy: HealthPolicy | None = None):
        self.policy = policy or HealthPolicy()
        self._origins = {o.name: o for o in origins}
        self._health = {o.name: OriginHealth(o.name, o.display_url) for o in origins}
        self._wake = {o.name: trio.Event() for o in origins}
        self._rng = random.Random()
        self._mode = Mode.ONLINE
        self.mode_changes = 0
        # Called with (origin name, new state) after every verdict change.
        self._listeners: list[Callable[[str, State], None]] = []

    def on_state_change(self, listener: Callable[[str, State], None]) -> None:
        self._listeners.append(listener)

    # -- verdicts ----------------------------------------------------------------------

    def state(self, name: str) -> State:
        return self._health[name].state

    def health(self, name: str) -> OriginHealth:
        return self._health[name]

    def usable(self, name: str) -> bool:
        return self._health[name].state is not State.UNHEALTHY

    @property
    def mode(self) -> Mode:
        return self._mode

    def _now(self) -> float:
        try:
            return trio.current_time()
        except RuntimeError:  # outside trio (status from a thread): good enough for ages
            return time.monotonic()

    def _update_mode(self) -> None:
        states = [h.state for h in self._health.values()]
        if states and all(s is State.HEALTHY for s in states):
            mode = Mode.ONLINE
        elif any(s is not State.UNHEALTHY for s in states):
            mode = Mode.DEGRADED
        else:
            mode = Mode.OFFLINE
        if mode is not self._mode:
            old, self._mode = self._mode, mode
            self.mode_changes += 1
            if mode is Mode.OFFLINE:
                log.warning(
                    "mode: offline (no origin can serve); cached data only, other reads fail "
                    "fast with EIO until an origin is back"
                )
            elif old is Mode.OFFLINE:
                log.warning("mode: %s again (an origin is back; reads resume)", mode.value)
            else:
                log.info("mode: %s", mode.value)

    def _set_state(self, h: OriginHealth, state: State, why: str) -> None:
        if state is not h.state:
            log.warning(
                "health: origin=%s url=%s %s -> %s (%s)",
                h.name,
                h.display_url,
                h.state.value,
                state.value,
                why,
            )
            h.state = state
            self._update_mode()
            for listener in self._listeners:
                listener(h.name, state)

    def record_failure(self, name: str, exc: BaseException) -> None:
        h = self._health[name]
        h.failures += 1
        h.successes = 0
        h.last_error = str(exc)
        if h.failures >= self.policy.fail_threshold:
            self._set_state(h, State.UNHEALTHY, h.last_error)
        elif h.state is State.HEALTHY:
            self._set_state(h, State.DEGRADED, h.last_error)
        # A failure seen by a read schedules the next check no later than its backoff.
        sooner = self._now() + self._delay(h)
        if sooner < h.next_check and not h.in_check:
            h.next_check = sooner
            self._wake[name].set()

    def record_success(self, name: str) -> None:
        h = self._health[name]
        h.successes += 1
        h.failures = 0
        if h.state is State.UNHEALTHY:
            if h.successes >= self.policy.recover_threshold:
                self._set_state(h, State.HEALTHY, "checks pass again")
            else:
                self._set_state(h, State.DEGRADED, "answered a check, recovering")
        elif h.state is State.DEGRADED and h.successes >= self.policy.recover_threshold:
            self._set_state(h, State.HEALTHY, "answers reliably again")

    def _delay(self, h: OriginHealth) -> float:
        p = self.policy
        if h.failures == 0:
            return p.interval
        backoff = backoff_delay(h.failures, p.interval, p.max_backoff, self._rng)
        return max(p.interval * 0.5, backoff)

    # -- checks --------------------------------------------------------------------------

    async def check_one(self, name: str) -> bool:
        """Check one origin now, bounded by ``check_timeout``; record and return the verdict."""
        origin, h = self._origins[name], self._health[name]
        started = self._now()
        h.in_check = True
        error: BaseException | None = None
        try:
            with trio.move_on_after(self.policy.check_timeout) as scope:
                await async_fail_point("health.check")
                await origin.check()
            if scope.cancelled_caught:
                error = OriginError(
                    errno.ETIMEDOUT,
                    f"health check got no answer within {self.policy.check_timeout:g}s",
                    origin=name,
                )
        except OSError as exc:
            error = exc
        except Exception as exc:  # a bug in an origin must not kill the monitor
            log.exception("health: origin=%s: check raised unexpectedly", name)
            error = exc
        finally:
            h.in_check = False
        now = self._now()
        h.checks += 1
        h.last_check = now
        h.last_check_wall = time.time()
        if error is None:
            h.latency = now - started
            self.record_success(name)
        else:
            self.record_failure(name, error)
            log.debug("health: origin=%s check failed: %s", name, error)
        h.next_check = now + self._delay(h)
        return error is None

    async def check_all(self) -> dict[str, bool]:
        """Check every origin at once; each verdict is recorded as soon as it is known."""
        results: dict[str, bool] = {}

        async def one(name: str) -> None:
            results[name] = await self.check_one(name)

        async with trio.open_nursery() as nursery:
            for name in self._origins:
                nursery.start_soon(one, name)
        return results

    def nudge(self) -> None:
        """Ask for early checks of failing origins (a read found nothing to serve it). Never
        brings a check forward to less than ``nudge_interval`` (or ``interval``, if shorter)
        after the previous one."""
        now = self._now()
        floor = min(self.policy.interval, self.policy.nudge_interval)
        for name, h in self._health.items():
            if h.state is State.HEALTHY or h.in_check:
                continue
            earliest = (h.last_check or -1e18) + floor
            if h.next_check > earliest:
                h.next_check = max(earliest, now)
                self._wake[name].set()

    async def _watch(self, name: str) -> None:
        h = self._health[name]
        while True:
            await self.check_one(name)
            while True:
                wait = h.next_check - self._now()
                if wait <= 0:
                    break
                with trio.move_on_after(wait):
                    await self._wake[name].wait()
                self._wake[name] = trio.Event()

    async def run(self) -> None:
        """Watch every origin until cancelled (the daemon runs this as a background task)."""
        async with trio.open_nursery() as nursery:
            for name in self._origins:
                nursery.start_soon(self._watch, name)

    # -- reporting -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self._now()
        origins = {}
        for h in self._health.values():  # in priority order
            origins[h.name] = {
                "url": h.display_url,
                "state": h.state.value,
                "consecutive_failures": h.failures,
                "last_error": h.last_error,
                "checks": h.checks,
                "last_check_age_s": None if h.last_check is None else round(now - h.last_check, 3),
                "next_check_in_s": round(max(0.0, h.next_check - now), 3),
                "latency_ms": None if h.latency is None else round(h.latency * 1000, 1),
            }
        return {"mode": self._mode.value, "origins": origins}
