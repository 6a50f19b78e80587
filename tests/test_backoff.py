"""fleetpulse.backoff: capped exponential waits with equal jitter, on an injected random source."""

from __future__ import annotations

import random

import pytest

from fleetpulse.backoff import Backoff, delay_ms


class Fixed:
    """A random source that always draws the same fraction of its range."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a + (b - a) * self.fraction


def test_a_wait_doubles_from_the_initial_delay_up_to_the_cap() -> None:
    ceilings = [delay_ms(n, initial_ms=500, max_ms=8000, rng=Fixed(1.0)) for n in range(8)]
    assert ceilings == [500, 1000, 2000, 4000, 8000, 8000, 8000, 8000]


def test_half_of_each_wait_is_fixed_and_half_drawn() -> None:
    rng = Fixed(0.0)
    assert delay_ms(3, initial_ms=500, max_ms=60_000, rng=rng) == 2000  # half of 4000
    assert rng.calls == [(0, 2000)]
    assert delay_ms(3, initial_ms=500, max_ms=60_000, rng=Fixed(0.5)) == 3000


def test_waits_stay_within_half_and_all_of_the_ceiling_and_are_not_in_lockstep() -> None:
    rng = random.Random(7)
    for n in range(60):  # far past the cap, and past any doubling that could overflow a float
        ceiling = min(60_000, 10 * 2**n)
        wait = delay_ms(n, initial_ms=10, max_ms=60_000, rng=rng)
        assert ceiling / 2 <= wait <= ceiling
    capped = {delay_ms(30, initial_ms=10, max_ms=60_000, rng=rng) for _ in range(20)}
    assert len(capped) == 20  # many clients at the cap still spread out


def test_a_negative_attempt_waits_the_initial_delay() -> None:
    assert delay_ms(-1, initial_ms=500, max_ms=8000, rng=Fixed(1.0)) == 500


def test_the_same_seed_gives_the_same_waits() -> None:
    first = Backoff(500, 8000, random.Random(3))
    second = Backoff(500, 8000, random.Random(3))
    assert [first.next_ms() for _ in range(10)] == [second.next_ms() for _ in range(10)]


def test_backoff_counts_attempts_and_resets_after_a_success() -> None:
    backoff = Backoff(500, 8000, Fixed(1.0))
    assert [backoff.next_s() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff.attempt == 6
    backoff.reset()
    assert backoff.attempt == 0 and backoff.next_ms() == 500


@pytest.mark.parametrize(("low", "high"), [(0, 100), (-5, 100), (200, 100)])
def test_backoff_refuses_bounds_that_would_spin_or_invert(low: int, high: int) -> None:
    with pytest.raises(ValueError, match="min_ms"):
        Backoff(low, high)
