"""What playbooks read: each account's daily signals, its registry row, and when its gateways were seen.

The batch job's output folder (``fleetpulse backfill --out``) holds both::

    <out>/signals/part-*.parquet        DailySignal per customer and day
    <out>/device_hourly/part-*.parquet  device hours, with the gateway that forwarded them

:func:`load_histories` turns them into one :class:`AccountHistory` per
customer. Gateway sightings are hours with any device record through that
gateway, read as three columns and made distinct with pyarrow, so a large
fleet costs (gateways x hours), not (devices x hours).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fleetpulse.pipeline.model import DailySignal
from fleetpulse.schemas.accounts import Account

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class GatewaySightings:
    """The hours (window starts, epoch ms) in which each of a customer's gateways forwarded anything."""

    hours_ms: Mapping[str, tuple[int, ...]]  # gateway id -> sorted hour starts
    #: the end of the data fleet-wide (latest hour seen + 1 h): a gateway is not
    #: called silent for hours the lake does not cover yet
    horizon_ms: int


@dataclass(frozen=True)
class AccountHistory:
    customer_id: str
    account: Account | None  # None: telemetry from a customer missing in the registry
    signals: tuple[DailySignal, ...]  # one per day, oldest first
    gateways: GatewaySightings | None = None  # None: no device hours available

    @property
    def last_day(self) -> str | None:
        return self.signals[-1].day if self.signals else None


def histories_from(signals: Iterable[DailySignal], accounts: Mapping[str, Account],
                   sightings: Mapping[str, GatewaySightings] | None = None) -> list[AccountHistory]:
    """Group signals per customer (one per day: a repeated day keeps the last row given)."""
    by_customer: dict[str, dict[str, DailySignal]] = defaultdict(dict)
    for signal in signals:
        by_customer[signal.customer_id][signal.day] = signal
    return [
        AccountHistory(
            customer_id=customer,
            account=accounts.get(customer),
            signals=tuple(days[d] for d in sorted(days)),
            gateways=(sightings or {}).get(customer),
        )
        for customer, days in sorted(by_customer.items())
    ]


def gateway_sightings(out: str | Path) -> dict[str, GatewaySightings]:
    """Per customer, the hours each gateway was seen, from ``<out>/device_hourly``; {} when absent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((Path(out) / "device_hourly").glob("part-*.parquet"))
    if not files:
        return {}
    columns = ["customer_id", "gateway_id", "hour_ms"]
    table = pa.concat_tables(pq.read_table(f, columns=columns) for f in files)
    distinct = table.group_by(columns).aggregate([])
    hours: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    horizon = 0
    for row in distinct.to_pylist():
        hours[row["customer_id"]][row["gateway_id"]].append(row["hour_ms"])
        horizon = max(horizon, row["hour_ms"] + HOUR_MS)
    return {
        customer: GatewaySightings({gw: tuple(sorted(h)) for gw, h in gws.items()}, horizon)
        for customer, gws in hours.items()
    }


def load_histories(out: str | Path, accounts: Mapping[str, Account]) -> list[AccountHistory]:
    """Every customer's history from a batch job's output folder."""
    from fleetpulse.pipeline.outputs.tables import read_signals

    return histories_from(read_signals(out), accounts, gateway_sightings(out))
