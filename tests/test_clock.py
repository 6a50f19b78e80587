"""fleetpulse.clock: wall-clock milliseconds and deadlines on an injected monotonic clock."""

from __future__ import annotations

import time

from fleetpulse.clock import Deadline, wall_clock_ms


class FakeMonotonic:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_wall_clock_ms_is_epoch_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    now = wall_clock_ms()
    assert isinstance(now, int) and before <= now <= time.time_ns() // 1_000_000


def test_a_deadline_counts_down_and_never_below_zero() -> None:
    clock = FakeMonotonic()
    deadline = Deadline(5.0, monotonic=clock)
    assert deadline.remaining_s() == 5.0 and not deadline.expired()
    clock.now_s += 3.5
    assert deadline.remaining_s() == 1.5
    clock.now_s += 1.5
    assert deadline.remaining_s() == 0.0 and deadline.expired()
    clock.now_s += 10
    assert deadline.remaining_s() == 0.0


def test_a_zero_deadline_has_expired_at_once() -> None:
    assert Deadline(0, monotonic=FakeMonotonic()).expired()
