"""The batch job over the lake: landing zone → signals, alerts, InfluxDB.

The plan, one named composite per step (the streaming job,
:mod:`fleetpulse.pipeline.jobs.ingest`, is the same plan over another source,
with event-time windows and a trigger instead of one pane per group)::

    ReadLanding → DecodeBatches ─▶ dead letters                      (Arrow tables from here …
                → KeepPeriod → DedupeRecords ─▶ (period) records      one table per event hour
                → DeviceHourlyRollups ─▶ device_hourly                … to here)
                → DeviceHours
                → CustomerDailyUsage
                → ScoreCustomers ◀─ accounts, model, gateway status: fleet context, offline
                                   gateways marked, every account scored ─▶ signals, alerts
    ReadLanding(status) → DecodeGatewayStatus ─▶ status (latest per gateway and minute)
    (period) records, hours, signals, alerts, status, dead letters
                → PublishResults: raw archive, device_hourly and signals Parquet, alerts.jsonl,
                  dead_letters.jsonl, InfluxDB fp_device_hourly / fp_customer_daily / fp_gateway_status

``--from`` / ``--to`` bound what is *written*; what is *read* reaches back
``history_days`` before ``--from`` (default: the whole lake), because a day's
signals look back (trends, baselines, coverage holds, alert onsets): the
period's outputs are then those of a run over the whole lake.

The record steps are the columnar ones (:mod:`fleetpulse.pipeline.transforms.columnar`):
landing files are read as Arrow tables, decoded, deduplicated and rolled up
with pyarrow, and Python objects appear only as DeviceHours. They give the
same rows, dead letters, counters and numbers as the per-element transforms
the streaming job uses (``tests/test_columnar_*.py``).

``build_pipeline`` returns the unrun pipeline (tests and a Flex Template call
it too); :func:`run` runs it and waits (``fleetpulse backfill`` parses and
validates its configuration in :mod:`fleetpulse.pipeline.cli.backfill`).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.options.pipeline_options import PipelineOptions

from fleetpulse.pipeline.health.config import HealthModel
from fleetpulse.pipeline.health.score import score_account
from fleetpulse.pipeline.model import DeviceHour
from fleetpulse.pipeline.outputs.influx import InfluxConfig
from fleetpulse.pipeline.outputs.publish import PublishResults, WholeFiles
from fleetpulse.pipeline.outputs.tables import write_health_model
from fleetpulse.pipeline.sources.lake import ReadLanding, ReadLandingTables, has_files
from fleetpulse.pipeline.transforms import (
    ALERTS,
    DEAD_LETTERS,
    SIGNALS,
    CustomerDailyUsage,
    DecodeBatches,
    DedupeRecords,
    DeviceHourlyRollups,
    ScoreCustomers,
)
from fleetpulse.pipeline.transforms.columnar import (
    DecodeBatchTables,
    DedupeRecordTables,
    DeviceHoursFromTables,
    DeviceHourTables,
)
from fleetpulse.pipeline.transforms.status import DEAD_LETTERS as STATUS_DEAD_LETTERS
from fleetpulse.pipeline.transforms.status import DecodeGatewayStatus
from fleetpulse.schemas.accounts import Account

log = logging.getLogger(__name__)


ENGINES = ("columnar", "per_element")


@dataclass(frozen=True)
class JobConfig:
    """Everything the job needs, resolved and validated before the pipeline is built."""

    lake: str
    out: str
    accounts: dict[str, Account]
    model: HealthModel
    influx: InfluxConfig | None = None
    from_day: date | None = None
    to_day: date | None = None  # inclusive
    #: days of history before ``from_day`` read for scoring only (trends,
    #: baselines, holds and alert onsets look back): None reads all the lake
    #: holds, which gives exactly the numbers of a run over the whole lake
    history_days: int | None = None
    #: how records are decoded, deduplicated and rolled up: "columnar" (Arrow
    #: tables, the default) or "per_element" (one dict per record, the
    #: streaming job's transforms); the outputs are the same
    engine: str = "columnar"
    #: groups per event hour of the columnar dedupe, rollups and raw archive (by device):
    #: the largest element is one hour of the fleet divided by this
    hour_shards: int = 1

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r} is not one of {ENGINES}")
        if self.hour_shards < 1:
            raise ValueError(f"hour_shards {self.hour_shards} is not positive")
        if self.history_days is not None and self.history_days < 0:
            raise ValueError(f"history_days {self.history_days} is negative")

    @property
    def read_from_day(self) -> date | None:
        """The first event day read: ``from_day`` less the scoring history (None: the lake's first)."""
        if self.from_day is None or self.history_days is None:
            return None
        return self.from_day - timedelta(days=self.history_days)

    @property
    def landing_from_day(self) -> date | None:
        """The first arrival day (landing ``dt=`` partition) that can hold a record read.

        A valid record arrives at most the contract's future skew (minutes)
        before its event time, and a landing file is named by the arrival of
        its first message and spans one commit interval or bundle: two days of
        slack cover both. None: every landing file.
        """
        first = self.read_from_day
        return first - timedelta(days=2) if first is not None else None

    @property
    def has_history(self) -> bool:
        """Whether records before ``from_day`` are read (for scoring, not written)."""
        return self.from_day is not None and self.read_from_day != self.from_day


def _ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def period_ms(from_day: date | None, to_day: date | None) -> tuple[int | None, int | None]:
    """[low, high) in epoch ms of the UTC days from_day..to_day, both inclusive (None: open)."""
    return (
        _ms(from_day) if from_day else None,
        _ms(to_day + timedelta(days=1)) if to_day else None,
    )


class KeepPeriod(beam.PTransform):
    """Keep lake rows whose event time falls in [from_day, to_day] (both optional, UTC)."""

    def __init__(self, from_day: date | None, to_day: date | None) -> None:
        super().__init__()
        self.low, self.high = period_ms(from_day, to_day)

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        low, high = self.low, self.high
        if low is None and high is None:
            return rows
        return rows | "InPeriod" >> beam.Filter(
            lambda r: (low is None or r["ts_ms"] >= low) and (high is None or r["ts_ms"] < high)
        )


def _in_period(table: pa.Table, low: int | None, high: int | None, column: str = "ts_ms") -> pa.Table:
    keep = None
    if low is not None:
        keep = pc.greater_equal(table[column], low)
    if high is not None:
        below = pc.less(table[column], high)
        keep = below if keep is None else pc.and_(keep, below)
    return table if keep is None else table.filter(keep)


class KeepPeriodTables(beam.PTransform):
    """:class:`KeepPeriod` for lake tables (by ``ts_ms``) or device-hour tables (``column="hour_ms"``).

    The bounds are whole UTC days, so an hour table of the columnar dedupe is
    kept or dropped whole.
    """

    def __init__(self, from_day: date | None, to_day: date | None, column: str = "ts_ms") -> None:
        super().__init__()
        self.low, self.high = period_ms(from_day, to_day)
        self.column = column

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        low, high, column = self.low, self.high, self.column
        if low is None and high is None:
            return tables
        return (
            tables
            | "InPeriod" >> beam.Map(_in_period, low, high, column)
            | "NotEmpty" >> beam.Filter(lambda t: t.num_rows > 0)
        )


@dataclass
class _Records:
    """What the record steps give the rest of the job."""

    decoded: Any  # DoOutputsTuple: main records and dead letters
    archived: beam.PCollection  # the period's deduplicated records, for the raw archive
    hours: beam.PCollection  # DeviceHours of the days read
    hour_tables: beam.PCollection | None = None  # the same as DEVICE_HOUR_SCHEMA tables (columnar)


def _device_hours(p: beam.Pipeline, config: JobConfig) -> _Records:
    """Landing zone → decoded records, the period's records to archive, device hours of the days read."""
    read_from, history = config.read_from_day, config.has_history
    if config.engine == "columnar":
        landing = ReadLandingTables(config.lake, since=config.landing_from_day)
        decoded = p | "ReadLanding" >> landing | "DecodeBatches" >> DecodeBatchTables()
        # One table per event hour (× device shard) from here: every copy of its records and
        # every record of its device-hours, so no other shuffle until the per-customer steps.
        records = (
            decoded.main
            | "KeepPeriod" >> KeepPeriodTables(read_from, config.to_day)
            | "DedupeRecords" >> DedupeRecordTables(config.hour_shards)
        )
        archived = (records | "ArchivePeriod" >> KeepPeriodTables(config.from_day, config.to_day)
                    if history else records)
        hour_tables = records | "DeviceHourlyRollups" >> DeviceHourTables()
        hours = hour_tables | "DeviceHours" >> DeviceHoursFromTables()
        return _Records(decoded, archived, hours, hour_tables)
    decoded = (
        p
        | "ReadLanding" >> ReadLanding(config.lake, since=config.landing_from_day)
        | "DecodeBatches" >> DecodeBatches()
    )
    rows = (
        decoded.main
        | "KeepPeriod" >> KeepPeriod(read_from, config.to_day)
        | "DedupeRecords" >> DedupeRecords()
    )
    archived = rows | "ArchivePeriod" >> KeepPeriod(config.from_day, config.to_day) if history else rows
    # Batch: one pane per group, the window start carried in the key (the
    # streaming job passes event-time windows and its trigger instead).
    return _Records(decoded, archived, rows | "DeviceHourlyRollups" >> DeviceHourlyRollups(window_mode="batch"))


class KeepOutputPeriod(beam.PTransform):
    """Keep outputs of the period: DeviceHours by ``hour_ms``, signals and alerts by ``day``.

    With scoring history (:attr:`JobConfig.has_history`) the job computes the
    days before ``--from`` too, so that the period's trends and alerts are
    those of a run over the whole lake; only the period is written.
    """

    def __init__(self, config: JobConfig) -> None:
        super().__init__()
        # The upper edge needs no filter: nothing after ``to_day`` is read.
        self.low = period_ms(config.from_day, None)[0]
        self.first = config.from_day.isoformat() if config.from_day else None

    def expand(self, items: beam.PCollection) -> beam.PCollection:
        low, first = self.low, self.first
        if low is None:
            return items

        def keep(item: Any) -> bool:
            if isinstance(item, DeviceHour):
                return bool(item.hour_ms >= low)
            return bool(item.day >= first)

        return items | "InPeriod" >> beam.Filter(keep)


def build_pipeline(options: PipelineOptions, config: JobConfig) -> beam.Pipeline:
    """The unrun pipeline for ``config`` (see the module docstring for the plan)."""
    p = beam.Pipeline(options=options)

    steps = _device_hours(p, config)
    all_hours, hour_tables = steps.hours, steps.hour_tables
    days = all_hours | "CustomerDailyUsage" >> CustomerDailyUsage(window_mode="batch")
    results: dict[str, beam.PCollection] = {"dead_letters": steps.decoded[DEAD_LETTERS]}
    status = None
    if has_files(config.lake, "status"):
        decoded_status = (
            p
            | "ReadStatus" >> ReadLanding(config.lake, zone="status", since=config.landing_from_day)
            | "DecodeGatewayStatus" >> DecodeGatewayStatus(window_mode="batch")
        )
        status = results["status"] = decoded_status["main"]
        results["status_dead_letters"] = decoded_status[STATUS_DEAD_LETTERS]
    scored = days | "ScoreCustomers" >> ScoreCustomers(config.accounts, config.model, score_account, status=status)
    signals, alerts, hours = scored[SIGNALS], scored[ALERTS], all_hours
    if config.has_history:
        hours = all_hours | "DeviceHoursOfPeriod" >> KeepOutputPeriod(config)
        if hour_tables is not None:
            hour_tables = hour_tables | "DeviceHourTablesOfPeriod" >> KeepPeriodTables(
                config.from_day, None, column="hour_ms")
        signals = signals | "SignalsOfPeriod" >> KeepOutputPeriod(config)
        alerts = alerts | "AlertsOfPeriod" >> KeepOutputPeriod(config)

    results.update(records=steps.archived, hours=hours, signals=signals, alerts=alerts)
    if hour_tables is not None:
        results["hour_tables"] = hour_tables
    files = WholeFiles(config.lake, config.out, columnar=config.engine == "columnar", shards=config.hour_shards)
    _ = results | "PublishResults" >> PublishResults(files, config.influx)
    return p


def clear_outputs(out: str) -> None:
    """A re-run replaces the previous outputs instead of mixing with them (local folders)."""
    if "://" in out:
        return
    for name in ("signals", "device_hourly"):
        shutil.rmtree(Path(out) / name, ignore_errors=True)


def local_beam_args() -> list[str]:
    """The local default: the DirectRunner's batch engine (FnApiRunner) on every core.

    Named explicitly so that a local run never tries to download the Prism
    runner first (the DirectRunner's default since Beam 2.6x), which fails
    offline and would change engines silently online.
    """
    workers = max(1, min(os.cpu_count() or 1, 4))
    return [
        "--runner=FnApiRunner",
        "--direct_running_mode=multi_processing",
        f"--direct_num_workers={workers}",
        "--default_sdk_harness_log_level=WARNING",
    ]


def run(config: JobConfig, beam_args: list[str]) -> Any:  # -> apache_beam PipelineResult
    """Run the job over ``config`` with ``beam_args`` (the local default when empty) and wait."""
    clear_outputs(config.out)
    write_health_model(config.out, config.model)  # the signals travel with the model that scored them
    options = PipelineOptions(beam_args or local_beam_args())
    result = build_pipeline(options, config).run()
    result.wait_until_finish()
    return result
