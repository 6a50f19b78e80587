"""The pipeline's composite transforms, shared by the batch and the streaming job.

    landing rows ─DecodeBatches─▶ lake rows (+ dead_letters)
                 ─DedupeRecords─▶ lake rows, one per (device_id, boot, seq)
                 ─DeviceHourlyRollups─▶ DeviceHour
                 ─CustomerDailyUsage─▶ CustomerDay
                 ─ScoreCustomers(accounts, model, score_fn, status)─▶ signals, alerts
                    (FleetContextFrom ─▶ fleet context; ScoreAccounts: the registry joined
                     with each customer's days and its gateways' offline reports)
    status rows  ─DecodeGatewayStatus─▶ latest status per gateway and minute (+ dead_letters)

The lake's columns are derived once, in :mod:`.rows` (``lake_fields`` /
``lake_columns``), from the telemetry contract.

The batch job runs the columnar twins of the first three steps, on Arrow
tables (:mod:`.columnar`: ``DecodeBatchTables`` → ``DedupeRecordTables`` →
``DeviceHourTables`` → ``DeviceHoursFromTables``; the same rows, reasons,
counters and DeviceHours). Import them from there: they are not re-exported
here, because :mod:`fleetpulse.pipeline.lake.schema`, which they use, itself
imports :mod:`.rows` from this package.
"""

from .decode import DEAD_LETTERS, DecodeBatches
from .dedupe import DedupeRecords
from .fleet import FleetContextFrom, firmware_key
from .rollups import (
    CustomerDailyUsage,
    DeviceHourlyRollups,
    WindowByEventTime,
    WithEventTime,
)
from .rows import lake_columns, lake_fields, lake_row
from .scoring import ALERTS, SIGNALS, ScoreAccounts, ScoreCustomers

__all__ = [
    "ALERTS",
    "DEAD_LETTERS",
    "SIGNALS",
    "CustomerDailyUsage",
    "DecodeBatches",
    "DedupeRecords",
    "DeviceHourlyRollups",
    "FleetContextFrom",
    "ScoreAccounts",
    "ScoreCustomers",
    "WindowByEventTime",
    "WithEventTime",
    "firmware_key",
    "lake_columns",
    "lake_fields",
    "lake_row",
]
