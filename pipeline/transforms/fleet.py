"""FleetContextFrom: what the whole fleet says, for judging each customer.

A customer's health must not be blamed for the vendor's own problems, and
"up to date" only means something against what the fleet runs. From every
customer's :class:`~fleetpulse.pipeline.model.CustomerDay` this builds one
context (a side input for scoring) with:

``first_day`` / ``last_day``
    the range of days with telemetry (both None when there is none at all);
``latest_fw_by_day``
    for every day in that range, the newest firmware seen anywhere in the
    fleet up to and including that day (versions compare numerically, see
    :func:`firmware_key`);
``feature_catalog``
    every feature any customer used (a frozenset);
``product_issue_fw_by_day``
    day → frozenset of firmware versions with a fleet-wide error spike that day: errors
    per reporting device on that firmware at least ``spike_factor`` times its
    own trailing median over the previous ``baseline_days`` (the median never
    below ``baseline_floor``, so a normally silent firmware needs a real burst,
    not three stray errors), *and* errors at ``min_customers`` or more
    customers — one customer's trouble is not a product issue. A firmware with
    no earlier day in range has no baseline and is never flagged.

Reporting devices on a firmware are the devices whose latest firmware that
day (``CustomerDay.device_fw``) is that version; errors come from
``CustomerDay.error_fw``. A device upgraded mid-day counts on its new version,
so the rate of the old one uses at least one device as denominator.

The combine keeps one compact summary per (customer, day), the latest
restatement by :func:`~fleetpulse.pipeline.model.restatement_rank` (the scoring join's rule
too), so restated (accumulating) panes of a day replace each other.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import apache_beam as beam
from apache_beam.transforms.trigger import AccumulationMode
from apache_beam.transforms.window import GlobalWindows

from fleetpulse.pipeline.model import CustomerDay, restatement_rank

_FIRMWARE = re.compile(r"^([0-9]+(?:\.[0-9]+){0,3})(?:([-+])([A-Za-z0-9.]+))?$")


def firmware_key(fw: str) -> tuple[Any, ...]:
    """Sort key for firmware versions: numeric parts first (3.10.0 > 3.9.2).

    A pre-release (``3.1.0-rc1``) sorts before its release, build metadata
    (``3.1.0+b7``) after it; a version that does not parse sorts first.
    """
    match = _FIRMWARE.match(fw)
    if match is None:
        return ((), 0, fw)
    numbers = tuple(int(part) for part in match.group(1).split("."))
    numbers += (0,) * (4 - len(numbers))
    rank = {"-": 0, None: 1, "+": 2}[match.group(2)]
    return (numbers, rank, match.group(3) or "")


def newest_firmware(versions: Any) -> str | None:
    """The newest of ``versions`` by :func:`firmware_key`, None when empty."""
    return max(versions, key=firmware_key, default=None)


@dataclass
class FleetAccumulator:
    """Partial fleet context; merging is associative and commutative."""

    features: set[str] = field(default_factory=set)
    newest_fw_by_day: dict[str, str] = field(default_factory=dict)
    #: (customer_id, day) -> (restatement rank, {fw: (errors, reporting devices)})
    customer_days: dict[tuple[str, str], tuple[tuple[Any, ...], dict[str, tuple[int, int]]]] = (
        field(default_factory=dict)
    )


def _summary(day: CustomerDay) -> tuple[tuple[Any, ...], dict[str, tuple[int, int]]]:
    devices: dict[str, int] = {}
    for fw in day.device_fw.values():
        devices[fw] = devices.get(fw, 0) + 1
    by_fw = {
        fw: (day.error_fw.get(fw, 0), devices.get(fw, 0))
        for fw in sorted(set(devices) | set(day.error_fw))
    }
    return restatement_rank(day), by_fw


def _note_newest(newest_by_day: dict[str, str], day: str, versions: list[str]) -> None:
    known = newest_by_day.get(day)
    newest = newest_firmware([*versions, known] if known else versions)
    if newest is not None:
        newest_by_day[day] = newest


def _keep_larger(
    into: dict[Any, tuple[tuple[Any, ...], dict[str, tuple[int, int]]]],
    key: Any,
    summary: tuple[tuple[Any, ...], dict[str, tuple[int, int]]],
) -> None:
    seen = into.get(key)
    if seen is None or summary[0] > seen[0]:
        into[key] = summary


class FleetContextFn(beam.CombineFn):
    """Combines every CustomerDay into the fleet context (see the module docstring)."""

    def __init__(
        self,
        *,
        spike_factor: float = 3.0,
        min_customers: int = 3,
        baseline_days: int = 14,
        baseline_floor: float = 0.05,
        make_context: Callable[..., Any] | None = None,
    ) -> None:
        if spike_factor <= 0 or min_customers < 1 or baseline_days < 1 or baseline_floor < 0:
            raise ValueError(
                "FleetContextFn needs spike_factor > 0, min_customers >= 1, "
                f"baseline_days >= 1, baseline_floor >= 0; got {spike_factor}, "
                f"{min_customers}, {baseline_days}, {baseline_floor}"
            )
        self.spike_factor = spike_factor
        self.min_customers = min_customers
        self.baseline_days = baseline_days
        self.baseline_floor = baseline_floor
        self.make_context = make_context or _health_fleet_context

    def create_accumulator(self) -> FleetAccumulator:
        return FleetAccumulator()

    def add_input(self, acc: FleetAccumulator, day: CustomerDay) -> FleetAccumulator:
        acc.features.update(day.features)
        _note_newest(acc.newest_fw_by_day, day.day, [*day.device_fw.values(), *day.error_fw])
        _keep_larger(acc.customer_days, (day.customer_id, day.day), _summary(day))
        return acc

    def merge_accumulators(self, accumulators: Any) -> FleetAccumulator:
        merged = FleetAccumulator()
        for acc in accumulators:
            merged.features |= acc.features
            for day, fw in acc.newest_fw_by_day.items():
                _note_newest(merged.newest_fw_by_day, day, [fw])
            for key, summary in acc.customer_days.items():
                _keep_larger(merged.customer_days, key, summary)
        return merged

    def extract_output(self, acc: FleetAccumulator) -> Any:
        days = {day for _, day in acc.customer_days} | set(acc.newest_fw_by_day)
        if not days:
            return self.make_context(
                first_day=None,
                last_day=None,
                latest_fw_by_day={},
                feature_catalog=frozenset(acc.features),
                product_issue_fw_by_day={},
            )
        first, last = min(days), max(days)
        calendar = _days(first, last)
        latest: dict[str, str] = {}
        newest: str | None = None
        for day in calendar:
            newest = newest_firmware(v for v in (newest, acc.newest_fw_by_day.get(day)) if v)
            if newest is not None:
                latest[day] = newest
        return self.make_context(
            first_day=first,
            last_day=last,
            latest_fw_by_day=latest,
            feature_catalog=frozenset(acc.features),
            product_issue_fw_by_day=self._product_issues(acc, calendar),
        )

    def _product_issues(
        self, acc: FleetAccumulator, calendar: list[str]
    ) -> dict[str, frozenset[str]]:
        # fleet-wide per (day, fw): errors, reporting devices, customers with errors
        totals: dict[tuple[str, str], list[int]] = {}
        for (_, day), (_, by_fw) in acc.customer_days.items():
            for fw, (errors, devices) in by_fw.items():
                t = totals.setdefault((day, fw), [0, 0, 0])
                t[0] += errors
                t[1] += devices
                t[2] += errors > 0
        rate = {key: errors / max(devices, 1) for key, (errors, devices, _) in totals.items()}
        index = {day: i for i, day in enumerate(calendar)}
        issues: dict[str, list[str]] = {}
        for (day, fw), (errors, _, customers) in sorted(totals.items()):
            if errors == 0 or customers < self.min_customers:
                continue
            i = index[day]
            history = [
                rate[(previous, fw)]
                for previous in calendar[max(0, i - self.baseline_days) : i]
                if (previous, fw) in rate
            ]
            if not history:
                continue
            baseline = max(statistics.median(history), self.baseline_floor)
            if rate[(day, fw)] >= self.spike_factor * baseline:
                issues.setdefault(day, []).append(fw)
        return {day: frozenset(fws) for day, fws in sorted(issues.items())}


def _health_fleet_context(**fields: Any) -> Any:
    # Imported when first used so the transforms stay importable on their own.
    from fleetpulse.pipeline.health.score import FleetContext

    return FleetContext(**fields)


def _days(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


class FleetContextFrom(beam.PTransform):
    """CustomerDay (all customers, all days) → a single fleet context (per pane), a side input.

    ``make_context(**fields)`` builds the output object from the fields named
    in the module docstring (default:
    :class:`fleetpulse.pipeline.health.score.FleetContext`).
    """

    def __init__(
        self,
        *,
        spike_factor: float = 3.0,
        min_customers: int = 3,
        baseline_days: int = 14,
        baseline_floor: float = 0.05,
        make_context: Callable[..., Any] | None = None,
        trigger: Any = None,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        self._trigger = trigger  # streaming: see ScoreAccounts
        self._combine = FleetContextFn(
            spike_factor=spike_factor,
            min_customers=min_customers,
            baseline_days=baseline_days,
            baseline_floor=baseline_floor,
            make_context=make_context,
        )

    def expand(self, days: beam.PCollection) -> beam.PCollection:
        if self._trigger is None:
            return (
                days
                | "AllHistory" >> beam.WindowInto(GlobalWindows())
                | "Combine" >> beam.CombineGlobally(self._combine)
            )
        return (
            days
            | "AllHistory" >> beam.WindowInto(GlobalWindows(), trigger=self._trigger,
                                               accumulation_mode=AccumulationMode.ACCUMULATING)
            | "Combine" >> beam.CombineGlobally(self._combine).without_defaults()
        )
