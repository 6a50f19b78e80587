"""The clocks FleetPulse parts read, in one place so that each part can be handed a fake.

* :func:`wall_clock_ms` — epoch milliseconds: event time, ``sent_ms``,
  spool timestamps, outbox schedules. It may jump (NTP, a gateway without a
  real-time clock), so what depends on it must survive a step backwards.
* :class:`Deadline` — a timeout on the monotonic clock, for "wait at most
  this long" across several waits (a drain, a bundle, a start-up).

Parts take a ``clock`` / ``clock_ms`` (a ``Callable[[], int]``) defaulting to
:func:`wall_clock_ms`, and a ``Deadline`` can be given a fake ``monotonic``.
Standard library only: the gateway imports it.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wall_clock_ms() -> int:
    """Milliseconds since the epoch (UTC), from the system clock."""
    return time.time_ns() // 1_000_000


class Deadline:
    """A point ``timeout_s`` after it was made, on a monotonic clock (seconds)."""

    def __init__(self, timeout_s: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self.timeout_s = timeout_s
        self._at = monotonic() + timeout_s

    def remaining_s(self) -> float:
        """Seconds left, never below 0."""
        return max(0.0, self._at - self._monotonic())

    def expired(self) -> bool:
        return self._monotonic() >= self._at
