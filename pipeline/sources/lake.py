"""Beam sources over the lake: the landing zone the lander and the streaming job write.

    <lake>/landing/dt=…/part-….parquet   raw broker messages (topic, payload, received_ms)
    <lake>/status/dt=…/part-….parquet    gateway status messages, the same columns

* :class:`ReadLanding` — every committed file of a zone → one dict per message
  (the per-element engine); :class:`ReadLandingTables` → Arrow tables (the
  columnar batch job). ``since`` reads only the arrival days from then on.
* :class:`ReplayLanding` — listed landing files a killed streaming run left
  pending → their rows, stamped with event time as the MQTT source stamps them
  (the replay registry is in :mod:`fleetpulse.pipeline.outputs.bundles`).

Paths go through Beam's ``FileSystems``: a local disk or object storage.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from fleetpulse.pipeline.lake.landing import LANDING_SCHEMA, iter_landing_rows
from fleetpulse.pipeline.lake.storage import is_remote, join

from .mqtt import EventTimeFn, earliest_event_ms

_DT = re.compile(r"/dt=(\d{4}-\d{2}-\d{2})/")


def landing_pattern(lake: str, zone: str) -> str:
    """The committed files of a landing zone (temporaries start with a dot)."""
    return join(lake, zone, "dt=*", "part-*.parquet")


def has_files(lake: str, zone: str) -> bool:
    """Whether ``zone`` holds any committed file (reading an empty pattern is an error in Beam)."""
    return bool(FileSystems.match([landing_pattern(lake, zone)])[0].metadata_list)


def _partition_day(path: str) -> date | None:
    found = _DT.search(path)
    return date.fromisoformat(found.group(1)) if found else None


def landing_files_since(lake: str, zone: str, since: date) -> list[str]:
    """Committed files of ``zone`` in ``dt=`` partitions (arrival days, UTC) from ``since`` on."""
    paths = [m.path for m in FileSystems.match([landing_pattern(lake, zone)])[0].metadata_list]
    return sorted(p for p in paths if (day := _partition_day(p)) is None or day >= since)


class ReadLanding(beam.PTransform):
    """Every committed landing file of ``zone`` → rows ``{topic, payload, received_ms}``.

    ``since``: only the files of arrival days (``dt=`` partitions) from that
    day on, listed when the pipeline is built (the rest are never opened).
    """

    #: Beam's reader of a file pattern, its reader of listed files, and their label
    _read: Any = beam.io.ReadFromParquet
    _read_all: Any = beam.io.ReadAllFromParquet
    _label = "ReadParquet"

    def __init__(self, lake: str, zone: str = "landing", since: date | None = None) -> None:
        super().__init__()
        self.lake, self.zone, self.since = lake, zone, since

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        columns = LANDING_SCHEMA.names
        if self.since is None:
            return pbegin | self._label >> self._read(landing_pattern(self.lake, self.zone), columns=columns)
        return (
            pbegin
            | "LandingFiles" >> beam.Create(landing_files_since(self.lake, self.zone, self.since))
            | self._label >> self._read_all(columns=columns)
        )


class ReadLandingTables(ReadLanding):
    """Every committed landing file of ``zone`` → Arrow tables (topic, payload, received_ms).

    ``since`` as for :class:`ReadLanding`.
    """

    _read = beam.io.ReadFromParquetBatched
    _read_all = beam.io.ReadAllFromParquetBatched
    _label = "ReadParquetBatched"


def _read_table(path: str, schema: pa.Schema) -> pa.Table:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return pq.read_table(pa.BufferReader(handle.read()), schema=schema)


def iter_landing_file(path: str) -> Iterator[dict[str, Any]]:
    """Rows of one landing file, local or on a Beam file system."""
    if not is_remote(path):
        yield from iter_landing_rows(Path(path))
        return
    yield from _read_table(path, LANDING_SCHEMA).to_pylist()


class ReplayLanding(beam.PTransform):
    """PBegin → the landing rows of ``files``, stamped like the MQTT source stamps them."""

    def __init__(
        self, files: Iterable[str | Path], event_time_fn: EventTimeFn = earliest_event_ms,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        self.files = sorted(str(f) for f in files)
        self._event_time_fn = event_time_fn

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        event_time_fn = self._event_time_fn

        def read(path: str) -> Iterator[TimestampedValue]:
            for row in iter_landing_file(path):
                ms = event_time_fn(row["topic"], row["payload"], row["received_ms"])
                # No event time: only a dead letter can come of it; keep it out of the way.
                yield TimestampedValue(row, MIN_TIMESTAMP if ms is None else Timestamp(micros=ms * 1000))

        return pbegin | "Files" >> beam.Create(self.files) | "Rows" >> beam.FlatMap(read)
