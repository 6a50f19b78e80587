"""PublishResults: every result of a job → its files and InfluxDB points, wired once for both jobs.

    records      ─▶ raw archive (lake/records, by event hour)
    hours        ─▶ <out>/device_hourly        ─▶ InfluxDB fp_device_hourly
                    (from ``hour_tables`` when the job has the device hours as Arrow tables)
    signals      ─▶ <out>/signals              ─▶ InfluxDB fp_customer_daily
    alerts       ─▶ <out>/alerts
    status       ─────────────────────────────▶ InfluxDB fp_gateway_status
    dead letters (every step's, and the points InfluxDB refused) ─▶ <out>/dead_letters

What differs between the jobs is how a file is written, which the job picks
as a :class:`Files` policy: :class:`WholeFiles` (batch: each output written
whole at the end) or :class:`BundleFiles` (streaming: one atomic file per
bundle and pane, registered for replay on a runner that keeps bundles in
memory). Each point set gets its own InfluxDB sink: the sets sit in different
windows (hours, minutes, the global window), and a Flatten needs one window
coder; dead letters are re-windowed into the global window before they merge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import apache_beam as beam
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindows

from fleetpulse.pipeline.lake.archive import WriteArchiveTables, WriteRawArchive
from fleetpulse.pipeline.model import DEVICE_HOUR_SCHEMA, SIGNAL_SCHEMA

from . import tables
from .bundles import WriteArchivePanes, WriteJsonLinesParts, WriteParquetParts
from .files import WriteJsonLines, WriteParquet, WriteParquetTables
from .influx import InfluxConfig, WriteToInflux
from .points import customer_day_point, device_hour_point, gateway_status_point


class Files(Protocol):
    """How a job writes its files: the raw archive, a table, JSON lines."""

    def archive(self) -> beam.PTransform: ...

    def table(self, name: str, schema: pa.Schema) -> beam.PTransform: ...

    def arrow_table(self, name: str, schema: pa.Schema) -> beam.PTransform: ...

    def lines(self, name: str) -> beam.PTransform: ...


@dataclass(frozen=True)
class WholeFiles:
    """Batch: each output written whole when the job ends; ``columnar``: records arrive as the
    hour tables of the columnar dedupe (``shards`` groups per hour)."""

    lake: str
    out: str
    columnar: bool = False
    shards: int = 1

    def archive(self) -> beam.PTransform:
        return WriteArchiveTables(self.lake, self.shards) if self.columnar else WriteRawArchive(self.lake)

    def table(self, name: str, schema: pa.Schema) -> beam.PTransform:
        return WriteParquet(f"{self.out.rstrip('/')}/{name}", schema)

    def arrow_table(self, name: str, schema: pa.Schema) -> beam.PTransform:
        return WriteParquetTables(f"{self.out.rstrip('/')}/{name}", schema)

    def lines(self, name: str) -> beam.PTransform:
        return WriteJsonLines(f"{self.out.rstrip('/')}/{name}.jsonl")


@dataclass(frozen=True)
class BundleFiles:
    """Streaming: one atomic file per bundle (and pane); ``writer`` registers them for replay
    (None: not registered, when the job's inputs were not landed and so cannot be replayed)."""

    lake: str
    out: str
    writer: str | None = None

    @property
    def _register(self) -> tuple[str, str] | None:
        return (self.lake, self.writer) if self.writer is not None else None

    def archive(self) -> beam.PTransform:
        return WriteArchivePanes(self.lake, self.writer)

    def table(self, name: str, schema: pa.Schema) -> beam.PTransform:
        return WriteParquetParts(f"{self.out.rstrip('/')}/{name}", schema, register=self._register)

    def arrow_table(self, name: str, schema: pa.Schema) -> beam.PTransform:
        return _TableRows(name) | self.table(name, schema)

    def lines(self, name: str) -> beam.PTransform:
        return WriteJsonLinesParts(f"{self.out.rstrip('/')}/{name}", register=self._register)


class _TableRows(beam.PTransform):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name}Rows")

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        return tables | beam.FlatMap(lambda table: table.to_pylist())


class PublishResults(beam.PTransform):
    """``{"records", "hours", "hour_tables", "signals", "alerts", "status", "…dead_letters"}`` → every output.

    ``hour_tables`` (optional): the device hours of ``hours`` as
    DEVICE_HOUR_SCHEMA tables, written to device_hourly without row dicts.

    Every key ending in ``dead_letters`` is a step's dead letters (e.g.
    ``dead_letters`` of the decoder, ``status_dead_letters``); ``signals`` and
    ``alerts`` may be absent (no accounts given), ``status`` too (no status
    zone in the lake). Returns nothing: the outputs are the files and points
    (see the module docstring).
    """

    def __init__(self, files: Files, influx: InfluxConfig | None = None, label: str | None = None) -> None:
        super().__init__(label)
        self.files, self.influx = files, influx

    def expand(self, results: dict[str, beam.PCollection]) -> None:
        files = self.files
        _ = results["records"] | "WriteRawArchive" >> files.archive()
        hours = results["hours"]
        if "hour_tables" in results:
            _ = results["hour_tables"] | "WriteDeviceHours" >> files.arrow_table("device_hourly", DEVICE_HOUR_SCHEMA)
        else:
            _ = (
                hours
                | "DeviceHourRows" >> beam.Map(tables.device_hour_row)
                | "WriteDeviceHours" >> files.table("device_hourly", DEVICE_HOUR_SCHEMA)
            )
        point_sets = {"Device": hours | "DevicePoints" >> beam.Map(device_hour_point)}
        signals, alerts, status = results.get("signals"), results.get("alerts"), results.get("status")
        if signals is not None:
            _ = (
                signals
                | "SignalRows" >> beam.Map(tables.signal_row)
                | "WriteSignals" >> files.table("signals", SIGNAL_SCHEMA)
            )
            point_sets["Customer"] = signals | "CustomerPoints" >> beam.Map(customer_day_point)
        if alerts is not None:
            _ = alerts | "AlertJson" >> beam.Map(tables.alert_json) | "WriteAlerts" >> files.lines("alerts")
        if status is not None:
            point_sets["GatewayStatus"] = status | "GatewayStatusPoints" >> beam.Map(gateway_status_point)

        dead = [pcoll for key, pcoll in sorted(results.items()) if key.endswith("dead_letters")]
        if self.influx is not None:
            for name, points in point_sets.items():
                dead.append(points | f"WriteInflux{name}" >> WriteToInflux(self.influx))
        _ = (
            tuple(d | f"DeadLettersWindow{n}" >> beam.WindowInto(GlobalWindows()) for n, d in enumerate(dead))
            | "AllDeadLetters" >> beam.Flatten()
            | "DeadLetterJson" >> beam.Map(tables.dead_letter_json)
            | "WriteDeadLetters" >> files.lines("dead_letters")
        )
