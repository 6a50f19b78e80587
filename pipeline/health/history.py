"""One customer's telemetry days indexed by date, and the raw facts the health model reads from them.

:class:`AccountHistory` answers the per-day questions that depend on the
telemetry and the model's settings only, never on a score: which devices are
known, the day's heartbeat coverage, whether a day is trustworthy, usage over
trustworthy days, the last active day and which gateways are out. The
components (:mod:`.components`), the alerts (:mod:`.alerts`) and the day loop
(:mod:`.score`, whose docstring states the rules) read it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from fleetpulse.pipeline.model import CustomerDay, one_per_day
from fleetpulse.schemas.accounts import Account

from .config import HealthModel

SECONDS_PER_DAY = 86400


@dataclass(frozen=True)
class Usage:
    """Usage of the primary quantity over a window, on trustworthy days only."""

    days: int  # trustworthy days of the window
    total: float
    active: frozenset[str]


class AccountHistory:
    """One customer's days by date, its CRM account (or ``None``) and memoised coverage."""

    def __init__(self, account: Account | None, days: Iterable[CustomerDay], model: HealthModel,
                 customer_id: str) -> None:
        self.account, self.model = account, model
        if account is not None and account.customer_id != customer_id:
            raise ValueError(f"account {account.customer_id!r} passed to score customer {customer_id!r}")
        rows = list(days)
        for row in rows:
            if row.customer_id != customer_id:
                raise ValueError(f"row of {row.customer_id!r} passed to score customer {customer_id!r}")
        # Two rows for one day are two restatements of it: the scoring join's rule picks the same one.
        self.by_day: dict[date, CustomerDay] = {date.fromisoformat(row.day): row for row in one_per_day(rows)}
        self.data_days = sorted(self.by_day)
        self.active_days = [d for d in self.data_days if self.by_day[d].active_devices]
        self.interval_days = [d for d in self.data_days if self.by_day[d].heartbeat_interval_s > 0]
        # Days before the first telemetry are unknown, not zero (the lake may start after the contract):
        # an account with telemetry begins with it; one with none is scored from its contract start.
        self.begin: date | None = self.data_days[0] if self.data_days else (
            account.contract_start if account else None)
        self.entitled = account.entitled_devices if account else 0
        self._coverage: dict[date, tuple[float, frozenset[str]]] = {}

    def window(self, end: date, length: int) -> list[date]:
        return [end - timedelta(days=i) for i in range(length - 1, -1, -1)]

    def rows(self, dates: Iterable[date]) -> list[CustomerDay]:
        return [row for d in dates if (row := self.by_day.get(d)) is not None]

    def interval_s(self, day: date) -> int:
        i = bisect.bisect_right(self.interval_days, day)
        if i == 0:
            return self.model.coverage.default_heartbeat_interval_s
        return self.by_day[self.interval_days[i - 1]].heartbeat_interval_s

    def coverage(self, day: date) -> tuple[float, frozenset[str]]:
        """(coverage, known devices) of a day; depends on raw data only, so it is memoised."""
        cached = self._coverage.get(day)
        if cached is not None:
            return cached
        known = frozenset(
            dev for row in self.rows(self.window(day, self.model.coverage.known_device_days))
            for dev in row.reporting_devices
        )
        row = self.by_day.get(day)
        heartbeats = row.heartbeats if row else 0
        if not known or heartbeats <= 0:
            result = (0.0, known)
        else:
            expected = len(known) * SECONDS_PER_DAY / self.interval_s(day)
            # Sequence gaps: records the devices numbered but that never arrived
            # (lost on the way) lower coverage too; the lower of the two counts.
            records = self.record_coverage(day)
            share = min(1.0, heartbeats / expected, 1.0 if records is None else records)
            result = (share, known)
        self._coverage[day] = result
        return result

    def record_coverage(self, day: date) -> float | None:
        """Records received ÷ records the sequence numbers say were sent that day (None: unknown)."""
        row = self.by_day.get(day)
        if row is None or row.expected_records <= 0:
            return None
        return min(1.0, row.records / row.expected_records)

    def trusted(self, day: date) -> bool:
        """A day of the account's life whose telemetry can be read as the customer's behaviour."""
        if self.begin is None or day < self.begin:
            return False
        return self.coverage(day)[0] >= self.model.coverage.low_coverage_below

    def usage(self, dates: Iterable[date]) -> Usage:
        quantity = self.model.usage_quantity
        trusted = [d for d in dates if self.trusted(d)]
        rows = self.rows(trusted)
        return Usage(
            days=len(trusted),
            total=sum(row.usage.get(quantity, 0.0) for row in rows),
            active=frozenset(dev for row in rows for dev in row.active_devices),
        )

    def baseline_dates(self, day: date) -> list[date]:
        window = self.model.window_days
        return self.window(day - timedelta(days=window), self.model.baseline_days)

    def last_active(self, day: date) -> date | None:
        i = bisect.bisect_right(self.active_days, day)
        return self.active_days[i - 1] if i else None

    def silent_gateways(self, day: date) -> dict[str, date]:
        """Gateways that are out today, with the day each was last seen.

        Out means seen in the known-device window but sending nothing today, or
        reported offline by its own status today (its Last Will or a clean stop):
        then part of the day's data may be missing even if some arrived.
        """
        today = self.by_day.get(day)
        present = set(today.gateways) if today else set()
        seen: dict[str, date] = {}
        for d in self.window(day - timedelta(days=1), self.model.coverage.known_device_days - 1):
            row = self.by_day.get(d)
            for gw in row.gateways if row else ():
                if gw not in present:
                    seen[gw] = d  # dates ascend, so the last write is the last sighting
        for gw in today.offline_gateways if today else ():
            seen[gw] = day
        return seen

    def reported_offline(self, day: date) -> frozenset[str]:
        """Gateways whose own status said offline that day (a subset of the silent ones)."""
        today = self.by_day.get(day)
        return frozenset(today.offline_gateways) if today else frozenset()
