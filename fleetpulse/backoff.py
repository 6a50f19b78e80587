"""Capped exponential back-off with equal jitter, for every FleetPulse retry loop.

The wait before retry ``attempt + 1`` (``attempt`` counting from 0) is drawn
between ``d/2`` and ``d`` where ``d = min(max_ms, initial_ms × 2^attempt)``:
never a hot loop, never longer than the cap, and clients that failed at the
same moment (a thousand gateways losing the central broker, a batch of
outbox messages hitting the same 503) spread out instead of retrying in
lockstep. Half of the wait is fixed, so a retry never comes at once.

    delay_ms(attempt, initial_ms=500, max_ms=60_000, rng=rng)    # one wait
    backoff = Backoff(500, 60_000, rng)                          # a reconnect loop's state
    backoff.next_s(); ...; backoff.reset()                       # after a success

``rng`` is any object with ``uniform(a, b)`` (a :class:`random.Random`; tests
pass a seeded one or a fake). Standard library only: the gateway imports it.
"""

from __future__ import annotations

import random
from typing import Protocol

#: Doublings beyond this change nothing for any cap that is a real duration,
#: and keep 2ⁿ a small number for a retry loop that ran for years.
_MAX_DOUBLINGS = 40


class RandomSource(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


def delay_ms(attempt: int, *, initial_ms: float, max_ms: float, rng: RandomSource) -> float:
    """The wait before retry ``attempt + 1`` in milliseconds (``attempt`` counts from 0)."""
    ceiling = min(max_ms, initial_ms * 2 ** min(max(attempt, 0), _MAX_DOUBLINGS))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class Backoff:
    """Successive waits of one retry loop: attempt n waits :func:`delay_ms` (n); ``reset()`` after a success."""

    def __init__(self, min_ms: int, max_ms: int, rng: RandomSource | None = None) -> None:
        if not 0 < min_ms <= max_ms:
            raise ValueError(f"back-off needs 0 < min_ms <= max_ms, not {min_ms} and {max_ms}")
        self.min_ms = min_ms
        self.max_ms = max_ms
        self._rng: RandomSource = rng or random.Random()
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """How many waits were handed out since the last reset."""
        return self._attempt

    def next_ms(self) -> float:
        wait = delay_ms(self._attempt, initial_ms=self.min_ms, max_ms=self.max_ms, rng=self._rng)
        self._attempt += 1
        return wait

    def next_s(self) -> float:
        return self.next_ms() / 1000

    def reset(self) -> None:
        self._attempt = 0
