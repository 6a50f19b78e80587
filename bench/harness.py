"""The benchmark harness: a baseline and a candidate timed in the same run.

These machines are noisy, so absolute timings mean little; each benchmark
times its baseline and its candidate alternately (best of ``repeats``) on the
same data in the same process and reports the ratio of their rates. A target
is expressed as a ratio (e.g. "at least 10x the naive implementation") and
checked here, not in timed tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Measurement:
    name: str
    items: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class Comparison:
    benchmark: str
    baseline: Measurement
    candidate: Measurement
    target_ratio: float | None = None  # candidate rate / baseline rate must be >= this

    @property
    def ratio(self) -> float:
        return self.candidate.rate / self.baseline.rate

    @property
    def ok(self) -> bool:
        return self.target_ratio is None or self.ratio >= self.target_ratio

    def line(self) -> str:
        target = "" if self.target_ratio is None else f"  target >= {self.target_ratio:g}x: {'PASS' if self.ok else 'FAIL'}"
        return (
            f"{self.benchmark}: {self.candidate.name} {self.candidate.rate:,.0f}/s vs "
            f"{self.baseline.name} {self.baseline.rate:,.0f}/s = {self.ratio:.2f}x{target}"
        )


def best_time(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def compare(
    benchmark: str,
    *,
    items: int,
    baseline: tuple[str, Callable[[], object]],
    candidate: tuple[str, Callable[[], object]],
    repeats: int = 5,
    target_ratio: float | None = None,
) -> Comparison:
    """Time both alternately (best of ``repeats`` each) over the same ``items``."""
    base_best = cand_best = float("inf")
    for _ in range(repeats):
        base_best = min(base_best, best_time(baseline[1], 1))
        cand_best = min(cand_best, best_time(candidate[1], 1))
    return Comparison(
        benchmark,
        Measurement(baseline[0], items, base_best),
        Measurement(candidate[0], items, cand_best),
        target_ratio,
    )
