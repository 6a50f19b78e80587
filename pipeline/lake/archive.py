"""Beam I/O of the Parquet lake: read the landing zone, write the raw archive.

    <lake>/landing/dt=…/part-….parquet           raw broker messages (the lander writes them)
    <lake>/records/dt=YYYY-MM-DD/hour=HH/part-00000.parquet
                                                 validated, deduplicated records by event hour

The archive is what history is recomputed from. Each hour partition is written
whole by one worker to a temporary name and renamed into place, so a reader
never sees a partial file and a re-run replaces the partition instead of
adding a second copy. Paths go through Beam's ``FileSystems`` so the lake can
live on a local disk or in object storage (gs://, s3://).
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from .landing import LANDING_SCHEMA
from .schema import lake_schema


def _join(*parts: str) -> str:
    return FileSystems.join(*parts) if "://" in parts[0] else "/".join(p.rstrip("/") for p in parts)


def partition_of(ts_ms: int) -> str:
    """The event-hour partition of a record: ``dt=YYYY-MM-DD/hour=HH`` (UTC)."""
    at = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return f"dt={at:%Y-%m-%d}/hour={at:%H}"


def has_files(lake: str, zone: str) -> bool:
    """Whether ``zone`` holds any committed file (reading an empty pattern is an error in Beam)."""
    return bool(FileSystems.match([_join(lake, zone, "dt=*", "part-*.parquet")])[0].metadata_list)


class ReadLanding(beam.PTransform):
    """Every committed landing file of ``zone`` → rows ``{topic, payload, received_ms}``."""

    def __init__(self, lake: str, zone: str = "landing") -> None:
        super().__init__()
        self.pattern = _join(lake, zone, "dt=*", "part-*.parquet")

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | "ReadParquet" >> beam.io.ReadFromParquet(
            self.pattern, columns=LANDING_SCHEMA.names
        )


class _WritePartition(beam.DoFn):
    def __init__(self, lake: str) -> None:
        self.lake = lake
        self.files = Metrics.counter("lake", "archive_files")
        self.rows = Metrics.counter("lake", "archive_rows")

    def process(self, element: tuple[str, Iterable[dict[str, Any]]]) -> Iterator[str]:
        partition, rows = element
        ordered = sorted(rows, key=lambda r: (r["device_id"], r["boot"], r["seq"]))
        table = pa.Table.from_pylist(ordered, schema=lake_schema())
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        final = _join(self.lake, "records", partition, "part-00000.parquet")
        tmp = _join(self.lake, "records", partition, f".part-00000.{uuid.uuid4().hex}.tmp")
        parent = _join(self.lake, "records", partition)
        if "://" not in parent:  # object stores have no folders to create
            os.makedirs(parent, exist_ok=True)
        with FileSystems.create(tmp) as handle:
            handle.write(buffer.getvalue())
        FileSystems.rename([tmp], [final])
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
