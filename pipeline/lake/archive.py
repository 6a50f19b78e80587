"""Beam writers of the Parquet lake's raw archive (its readers are :mod:`fleetpulse.pipeline.sources.lake`).

    <lake>/landing/dt=…/part-….parquet           raw broker messages (the lander writes them)
    <lake>/records/dt=YYYY-MM-DD/hour=HH/part-00000.parquet
                                                 validated, deduplicated records by event hour
                                                 (part-<n>: one per device shard of the hour)

Rows or Arrow tables: ``WriteRawArchive`` writes one dict per record (the
per-element engine), ``WriteArchiveTables`` the columnar engine's hour
tables as they come from its dedupe (one table per event hour, or per device
shard of it: ``part-<shard>.parquet``); both write the same rows.

The archive is what history is recomputed from. Each hour partition is written
whole by one worker to a temporary name and renamed into place, so a reader
never sees a partial file and a re-run replaces the partition instead of
adding a second copy. Paths go through Beam's ``FileSystems`` so the lake can
live on a local disk or in object storage (gs://, s3://).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from .schema import lake_schema
from .storage import commit_bytes, device_shard, parquet_bytes


def _join(*parts: str) -> str:
    return FileSystems.join(*parts) if "://" in parts[0] else "/".join(p.rstrip("/") for p in parts)


def partition_of(ts_ms: int) -> str:
    """The event-hour partition of a record: ``dt=YYYY-MM-DD/hour=HH`` (UTC)."""
    at = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return f"dt={at:%Y-%m-%d}/hour={at:%H}"


def write_partition(lake: str, partition: str, table: pa.Table, *, part: str = "part-00000.parquet",
                    stale: int = 1) -> str:
    """Write one event-hour partition's ``part`` whole (rows by device, boot, seq); returns the path.

    What it supersedes is removed after the new file is in place, so the
    hour is never missing: the streaming job's panes of the hour
    (``part-s-*``; the backfill derived this file from the same landing zone
    they came from) and the parts of an earlier run with more groups than
    ``stale`` (``part-<n>`` for n ≥ ``stale``).
    """
    final = _join(lake, "records", partition, part)
    commit_bytes(final, parquet_bytes(table))
    found = FileSystems.match([_join(lake, "records", partition, "part-*.parquet")])[0].metadata_list
    superseded = [m.path for m in found if _superseded(m.path.rsplit("/", 1)[-1], stale)]
    if superseded:
        FileSystems.delete(superseded)
    return final


def _superseded(name: str, groups: int) -> bool:
    if name.startswith("part-s-"):
        return True
    index = name[len("part-"):-len(".parquet")]
    return index.isdigit() and int(index) >= groups


class _WritePartition(beam.DoFn):
    def __init__(self, lake: str) -> None:
        self.lake = lake
        self.files = Metrics.counter("lake", "archive_files")
        self.rows = Metrics.counter("lake", "archive_rows")

    def process(self, element: tuple[str, Iterable[dict[str, Any]]]) -> Iterator[str]:
        partition, rows = element
        ordered = sorted(rows, key=lambda r: (r["device_id"], r["boot"], r["seq"]))
        table = pa.Table.from_pylist(ordered, schema=lake_schema())
        final = write_partition(self.lake, partition, table)
        self.files.inc()
        self.rows.inc(len(ordered))
        yield final


class WriteRawArchive(beam.PTransform):
    """Deduplicated lake rows → one Parquet file per event hour; emits the paths written."""

    def __init__(self, lake: str) -> None:
        super().__init__()
        self.lake = lake

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "KeyByHour" >> beam.Map(lambda row: (partition_of(row["ts_ms"]), row))
            | "GroupByHour" >> beam.GroupByKey()
            | "WriteHour" >> beam.ParDo(_WritePartition(self.lake))
        )


def part_name(shard: int) -> str:
    """The file of a group's rows in its hour partition: ``part-<shard>.parquet`` (shard 0: ``part-00000``)."""
    return f"part-{shard:05d}.parquet"


class _WriteHourTable(beam.DoFn):
    def __init__(self, lake: str, shards: int) -> None:
        self.lake, self.shards = lake, shards
        self.files = Metrics.counter("lake", "archive_files")
        self.rows = Metrics.counter("lake", "archive_rows")

    def process(self, table: pa.Table) -> Iterator[str]:
        if table.num_rows == 0:
            return
        partition = partition_of(table["ts_ms"][0].as_py())
        shard = device_shard(table["device_id"][0].as_py(), self.shards)
        ordered = table.sort_by([("device_id", "ascending"), ("boot", "ascending"), ("seq", "ascending")])
        final = write_partition(
            self.lake, partition, ordered.replace_schema_metadata(lake_schema().metadata),
            part=part_name(shard), stale=self.shards,
        )
        self.files.inc()
        self.rows.inc(table.num_rows)
        yield final


class WriteArchiveTables(beam.PTransform):
    """Hour tables of :class:`~fleetpulse.pipeline.transforms.columnar.DedupeRecordTables` → the hour
    files of :class:`WriteRawArchive`; emits the paths.

    Each table is one event hour (with ``shards`` > 1, one device shard of it)
    and holds every record of it, so it is written as it comes, without
    another shuffle: ``part-00000.parquet``, or ``part-<shard>.parquet`` per
    shard, replacing a previous run's parts of the hour (also those of a run
    with more shards).
    """

    def __init__(self, lake: str, shards: int = 1) -> None:
        super().__init__()
        self.lake, self.shards = lake, shards

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        return tables | "WriteHour" >> beam.ParDo(_WriteHourTable(self.lake, self.shards))
