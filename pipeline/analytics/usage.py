"""Usage per customer for a date range, read columnar from the lake's raw archive.

The archive is ``<lake>/records/dt=YYYY-MM-DD/hour=HH/part-00000.parquet``
(see :mod:`fleetpulse.pipeline.lake.archive`), one deduplicated row per
record. Reading a period:

1. open the archive as a ``pyarrow.dataset`` with hive partitioning, so a
   filter on ``dt`` prunes whole folders before any file is opened;
2. project only ``customer_id``, ``device_id`` and ``quantities`` and keep
   rows that carry quantities (usage records);
3. per record batch, explode ``quantities`` (``list_flatten`` +
   ``list_parent_indices``), keep the chosen quantity (name and unit) and sum
   it per (customer, device) — so memory grows with devices, not records;
4. re-aggregate: usage per customer, and active devices = devices whose usage
   in the period is above zero (the primer's "active device").

Days are UTC calendar days, as the partitions are (event time).

    from fleetpulse.pipeline.analytics.usage import Period, open_archive, period_usage
    archive = open_archive("/data/lake")
    table = period_usage(archive, Period.parse("2026-08-01:2026-08-31"), "runtime_s")
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

#: partition columns of the archive; strings, so ISO dates compare in order
PARTITION_SCHEMA = pa.schema([pa.field("dt", pa.string()), pa.field("hour", pa.string())])
#: the archive columns usage needs (everything else is never read)
USAGE_COLUMNS: tuple[str, ...] = ("customer_id", "device_id", "quantities")
#: what :func:`period_usage` returns, one row per customer with usage records
USAGE_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string()),
        pa.field("usage", pa.float64()),
        pa.field("active_devices", pa.int64()),
    ]
)
_DEVICE_USAGE_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string()),
        pa.field("device_id", pa.string()),
        pa.field("usage", pa.float64()),
    ]
)
_DT_RE = re.compile(r"(?:^|/)dt=(\d{4}-\d{2}-\d{2})(?:/|$)")


@dataclass(frozen=True)
class Period:
    """A closed range of UTC calendar days, ``start`` to ``end`` inclusive."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"the period ends ({self.end}) before it starts ({self.start})")

    @classmethod
    def parse(cls, text: str) -> Period:
        """``"2026-08-01:2026-08-31"`` → Period; ValueError saying what is wrong."""
        parts = text.strip().split(":")
        if len(parts) != 2:
            raise ValueError(f"{text!r} is not FROM:TO")
        try:
            start, end = (date.fromisoformat(p.strip()) for p in parts)
        except ValueError:
            raise ValueError(f"{text!r} does not hold two YYYY-MM-DD dates") from None
        return cls(start, end)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def overlaps(self, other: Period) -> bool:
        return self.start <= other.end and other.start <= self.end

    def dates(self) -> list[str]:
        """Every day of the period as ``YYYY-MM-DD`` (the ``dt`` partition values)."""
        return [(self.start + timedelta(days=i)).isoformat() for i in range(self.days)]

    def __str__(self) -> str:
        return f"{self.start}..{self.end}"


def split_quantity(key: str) -> tuple[str, str]:
    """``"runtime_s"`` → ``("runtime", "s")``: the inverse of ``model.quantity_key``.

    The unit is what follows the last underscore (units carry none; names may).
    """
    name, sep, unit = key.rpartition("_")
    if not sep or not name or not unit:
        raise ValueError(f"{key!r} is not a quantity key name_unit such as runtime_s")
    return name, unit


def archive_path(lake: str | Path) -> str:
    """Where the raw archive of ``lake`` lives (local path or object-store URI)."""
    return f"{str(lake).rstrip('/')}/records"


def open_archive(lake: str | Path) -> ds.Dataset:
    """The raw archive as a hive-partitioned dataset (FileNotFoundError when absent).

    Files whose name starts with ``.`` or ``_`` — the archive writer's
    temporary files — are ignored by ``pyarrow.dataset``. The file schema is
    read from the files (every one was written with ``lake_schema()``), not
    imported: ``fleetpulse.pipeline.lake.schema`` pulls in Beam through
    ``fleetpulse.pipeline.transforms``, seconds of start-up this command
    does not need.
    """
    return ds.dataset(
        archive_path(lake),
        format="parquet",
        partitioning=ds.partitioning(PARTITION_SCHEMA, flavor="hive"),
    )


def archive_days(archive: ds.Dataset) -> list[str]:
    """The ``dt`` values that hold at least one file, sorted (from paths; no file is opened)."""
    files: Iterable[str] = archive.files
    return sorted({m.group(1) for f in files if (m := _DT_RE.search(f.replace("\\", "/")))})


def period_filter(period: Period) -> ds.Expression:
    """Partition pruning on ``dt`` plus "this row carries quantities"."""
    return (
        (ds.field("dt") >= period.start.isoformat())
        & (ds.field("dt") <= period.end.isoformat())
        & ds.field("quantities").is_valid()
    )


def device_usage(records: pa.Table, name: str, unit: str) -> pa.Table:
    """Records (``customer_id``, ``device_id``, ``quantities``) → usage of one quantity per device.

    Returns ``customer_id``, ``device_id``, ``usage`` (float64); devices whose
    records lack the quantity are absent.
    """
    records = records.select(list(USAGE_COLUMNS)).combine_chunks()
    if records.num_rows == 0:
        return _DEVICE_USAGE_SCHEMA.empty_table()
    lists = records["quantities"].chunk(0)  # one chunk after combine_chunks
    flat = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists)
    wanted = pc.and_(
        pc.equal(pc.struct_field(flat, "name"), name),
        pc.equal(pc.struct_field(flat, "unit"), unit),
    )
    rows = pc.filter(parents, wanted)
    exploded = pa.table(
        {
            "customer_id": pc.take(records["customer_id"], rows),
            "device_id": pc.take(records["device_id"], rows),
            "usage": pc.filter(pc.struct_field(flat, "value"), wanted),
        },
        schema=_DEVICE_USAGE_SCHEMA,
    )
    return _sum_per_device(exploded)


def _sum_per_device(table: pa.Table) -> pa.Table:
    summed = table.group_by(["customer_id", "device_id"]).aggregate([("usage", "sum")])
    return summed.rename_columns({"usage_sum": "usage"}).select(_DEVICE_USAGE_SCHEMA.names).cast(
        _DEVICE_USAGE_SCHEMA
    )


def customer_usage(devices: pa.Table) -> pa.Table:
    """Per-device usage → per customer: ``usage`` total and ``active_devices`` (usage > 0)."""
    if devices.num_rows == 0:
        return USAGE_SCHEMA.empty_table()
    devices = _sum_per_device(devices)  # partial sums from several batches → one per device
    active = pc.cast(pc.greater(devices["usage"], 0.0), pa.int64())
    totals = (
        devices.append_column("active", active)
        .group_by("customer_id")
        .aggregate([("usage", "sum"), ("active", "sum")])
        .rename_columns({"usage_sum": "usage", "active_sum": "active_devices"})
    )
    return totals.select(USAGE_SCHEMA.names).cast(USAGE_SCHEMA).sort_by("customer_id")


def period_usage(archive: ds.Dataset, period: Period, quantity: str) -> pa.Table:
    """Usage of ``quantity`` (a key such as ``runtime_s``) per customer over ``period``.

    One row per customer that has records of that quantity in the period
    (:data:`USAGE_SCHEMA`); customers with none are absent, callers treat
    them as zero.
    """
    name, unit = split_quantity(quantity)
    scanner = archive.scanner(columns=list(USAGE_COLUMNS), filter=period_filter(period))
    # One partial table per record batch keeps memory bounded by the device count.
    partials = [
        device_usage(pa.Table.from_batches([batch]), name, unit)
        for batch in scanner.to_batches()
        if batch.num_rows
    ]
    if not partials:
        return USAGE_SCHEMA.empty_table()
    return customer_usage(pa.concat_tables(partials))
