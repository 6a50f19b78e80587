"""Beam writers of the Parquet lake's raw archive (its readers are :mod:`fleetpulse.pipeline.sources.lake`).

    <lake>/landing/dt=…/part-….parquet           raw broker messages (the lander writes them)
    <lake>/records/dt=YYYY-MM-DD/hour=HH/part-00000.parquet
                                                 validated, deduplicated records by event hour

Rows or Arrow tables: ``WriteRawArchive`` writes one dict per record (the
per-element engine), ``WriteRawArchiveTables`` Arrow tables (the columnar
batch job); both write the same files.

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
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from .schema import lake_schema
from .storage import commit_bytes, parquet_bytes, table_from_ipc, table_to_ipc


def _join(*parts: str) -> str:
    return FileSystems.join(*parts) if "://" in parts[0] else "/".join(p.rstrip("/") for p in parts)


def partition_of(ts_ms: int) -> str:
    """The event-hour partition of a record: ``dt=YYYY-MM-DD/hour=HH`` (UTC)."""
    at = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return f"dt={at:%Y-%m-%d}/hour={at:%H}"


def write_partition(lake: str, partition: str, table: pa.Table) -> str:
    """Write one event-hour partition whole (rows by device, boot, seq); returns the path."""
    final = _join(lake, "records", partition, "part-00000.parquet")
    commit_bytes(final, parquet_bytes(table))
    # The streaming job's panes for this hour (part-s-*) are superseded: the
    # backfill derived this file from the same landing zone they came from.
    # Removed after the new file is in place, so the hour is never missing.
    panes = FileSystems.match([_join(lake, "records", partition, "part-s-*.parquet")])[0].metadata_list
    if panes:
        FileSystems.delete([m.path for m in panes])
    return final


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


def _by_partition(table: pa.Table) -> Iterator[tuple[str, bytes]]:
    """``(partition, IPC bytes of its rows)`` per event hour of ``table``.

    Bytes, not tables: the local runner groups in its own process by decoding
    and re-encoding every value with its coder; bytes pass through as they are.
    One ``take`` orders the rows by hour; the IPC stream of a slice holds only
    the slice's rows.
    """
    ts = table["ts_ms"].to_numpy()
    hours = ts - ts % 3_600_000
    order = np.argsort(hours, kind="stable")
    hours = hours[order]
    starts = np.flatnonzero(np.concatenate(([True], hours[1:] != hours[:-1])))
    ends = np.append(starts[1:], len(hours))
    ordered = table.take(pa.array(order))
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        yield partition_of(int(hours[start])), table_to_ipc(ordered.slice(start, end - start))


class _WritePartitionTables(beam.DoFn):
    def __init__(self, lake: str) -> None:
        self.lake = lake
        self.files = Metrics.counter("lake", "archive_files")
        self.rows = Metrics.counter("lake", "archive_rows")

    def process(self, element: tuple[str, Iterable[bytes]]) -> Iterator[str]:
        partition, parts = element
        tables = [table_from_ipc(part) for part in parts]
        table = pa.concat_tables(tables).sort_by(
            [("device_id", "ascending"), ("boot", "ascending"), ("seq", "ascending")]
        )
        final = write_partition(self.lake, partition, table.replace_schema_metadata(lake_schema().metadata))
        self.files.inc()
        self.rows.inc(table.num_rows)
        yield final


class WriteRawArchiveTables(beam.PTransform):
    """Deduplicated lake tables → the same hour files as :class:`WriteRawArchive`; emits the paths."""

    def __init__(self, lake: str) -> None:
        super().__init__()
        self.lake = lake

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        return (
            tables
            | "SplitByHour" >> beam.FlatMap(_by_partition).with_output_types(tuple[str, bytes])
            | "GroupByHour" >> beam.GroupByKey()
            | "WriteHour" >> beam.ParDo(_WritePartitionTables(self.lake))
        )
