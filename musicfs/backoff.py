"""Exponential backoff: the one implementation behind every retry and restart.

* ``backoff_delay`` -- the pause after the n-th consecutive failure, jittered so that
  many waiters (reads on a failing origin, SFTP reconnects, health checks) do not retry
  in lockstep;
* ``RestartBackoff`` -- the pause before restarting something that failed (a supervised
  task, pyfuse3's workers): it doubles on each failure and starts afresh after a run that
  served long enough to count as a new episode rather than the same one.
"""

from __future__ import annotations

import random

_RNG = random.Random()


def backoff_delay(
    failures: int,
    base: float,
    cap: float,
    rng: random.Random | None = None,
    *,
    jitter: bool = True,
) -> float:
    """``base * 2**(failures-1)`` capped at ``cap``; with ``jitter`` scaled by a random
    factor in [0.5, 1]. No failure, no wait."""
    if failures <= 0:
        return 0.0
    raw = min(cap, base * 2.0 ** min(failures - 1, 30))
    return raw * (rng or _RNG).uniform(0.5, 1.0) if jitter else raw


class RestartBackoff:
    """Pauses ``first``, ``2*first``, ... up to ``cap`` between restarts; a run that lasted
    longer than ``calm`` seconds resets the sequence."""

    def __init__(self, first: float, cap: float, calm: float):
        self.first = first
        self.cap = cap
        self.calm = calm
        self.failures = 0

    def pause_after(self, ran_for: float) -> float:
        """The pause before the next restart of a run that failed after ``ran_for``
        seconds."""
        if ran_for > self.calm:
            self.failures = 0
        self.failures += 1
        return backoff_delay(self.failures, self.first, self.cap, jitter=False)
