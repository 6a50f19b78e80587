"""The streaming job's file sinks: one atomic file per bundle, named by its content.

A stream never ends, so its files are written as it goes: each DoFn buffers a
bundle's elements and writes them in ``finish_bundle`` to a hidden temporary
name, fsyncs and renames into place (:func:`~fleetpulse.pipeline.lake.landing.write_atomically`).
A reader never sees a partial file. The file name is a hash of the content,
so a bundle the runner retries after a failure writes the same name again
(replacing, not adding a copy).

* :class:`LandMessages` — the write-ahead landing: raw broker messages to
  ``<lake>/landing/`` (the zone ``fleetpulse backfill`` reads) before the
  source acknowledges them. Fused with the source, it runs inside the
  source's bundle, so the bundle finalizer (the PUBACK) comes after the fsync:
  an acknowledged message is on disk even if the runner's memory is lost. It
  also leaves a *pending* marker per file under
  ``<lake>/ingest/<writer>/pending/``; a run that ends cleanly clears them, and
  the next run replays the files still pending (:class:`ReplayLanding`).
* Outputs derived from the stream (archive panes, JSON-lines parts) are
  registered under ``<lake>/ingest/<writer>/outputs/`` before they are
  written. A run that is killed leaves them registered; the next run deletes
  them (:func:`rollback_unfinished_outputs`) before replaying the pending
  landing files they were derived from, so a restart rebuilds them once
  instead of adding a second copy beside them.
* :class:`WriteArchivePanes` — validated, deduplicated records to
  ``<lake>/records/dt=YYYY-MM-DD/hour=HH/part-s-<hash>.parquet`` (event hour).
* :class:`WriteJsonLinesParts` — strings to ``<folder>/part-<hash>.jsonl``
  (dead letters, alerts).

Local paths only (``os.replace`` and fsync are the commit); object stores need
a FileSystems-based commit, see docs/STREAMING.md.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from fleetpulse.pipeline.lake.archive import partition_of
from fleetpulse.pipeline.lake.landing import (
    LANDING_SCHEMA,
    iter_landing_rows,
    landing_dir,
    write_atomically,
)
from fleetpulse.pipeline.lake.schema import lake_schema

from .mqtt import EventTimeFn, earliest_event_ms

METRICS_NAMESPACE = "fleetpulse.pipeline.ingest_files"


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:24]


def pending_dir(lake: str | Path, writer: str) -> Path:
    """Where a writer's not-yet-processed landing files are marked."""
    return Path(lake) / "ingest" / writer / "pending"


def pending_landing_files(lake: str | Path, writer: str) -> list[Path]:
    """Landing files written by ``writer`` whose run did not end cleanly, oldest first."""
    marks = pending_dir(lake, writer)
    if not marks.exists():
        return []
    root = landing_dir(lake)
    files: list[Path] = []
    for mark in sorted(marks.iterdir()):
        files.extend(root.glob(f"dt=*/{mark.name}"))
    return sorted(files, key=lambda p: p.name)


def outputs_dir(lake: str | Path, writer: str) -> Path:
    """Where the outputs of a writer's unfinished run are registered."""
    return Path(lake) / "ingest" / writer / "outputs"


def register_output(lake: str | Path, writer: str, path: Path) -> None:
    """Record ``path`` as an output of the running (not yet finished) run; call before writing it."""
    marks = outputs_dir(lake, writer)
    marks.mkdir(parents=True, exist_ok=True)
    text = str(Path(path).resolve())
    (marks / hashlib.sha256(text.encode()).hexdigest()[:32]).write_text(text, "utf-8")


def rollback_unfinished_outputs(lake: str | Path, writer: str) -> int:
    """Delete every output a killed run registered (its inputs are replayed); returns how many."""
    marks = outputs_dir(lake, writer)
    if not marks.exists():
        return 0
    removed = 0
    for mark in sorted(marks.iterdir()):
        output = Path(mark.read_text("utf-8"))
        if output.exists():
            output.unlink()
            removed += 1
        mark.unlink()
    return removed


def clear_pending(lake: str | Path, writer: str) -> int:
    """A run ended cleanly: forget its pending landing files and outputs; returns how many."""
    removed = 0
    for marks in (pending_dir(lake, writer), outputs_dir(lake, writer)):
        if marks.exists():
            for mark in marks.iterdir():
                mark.unlink(missing_ok=True)
                removed += 1
    return removed


class _LandFn(beam.DoFn):
    def __init__(self, lake: str, writer: str) -> None:
        self._lake = lake
        self._writer = writer
        self._files = Metrics.counter(METRICS_NAMESPACE, "landing_files")
        self._rows = Metrics.counter(METRICS_NAMESPACE, "landing_rows")

    def start_bundle(self) -> None:
        self._buffer: list[dict[str, Any]] = []

    def process(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self._buffer.append(row)
        yield row

    def finish_bundle(self) -> None:
        if not self._buffer:
            return
        rows, self._buffer = self._buffer, []
        first = min(r["received_ms"] for r in rows)
        day = datetime.fromtimestamp(first / 1000, tz=UTC).strftime("%Y-%m-%d")
        digest = _digest(r["topic"].encode() + b"\0" + r["payload"] for r in rows)
        name = f"part-{first:013d}-{self._writer}-{digest}.parquet"
        table = pa.Table.from_pylist(
            [{"topic": r["topic"], "payload": r["payload"], "received_ms": r["received_ms"]} for r in rows],
            schema=LANDING_SCHEMA,
        )
        write_atomically(table, landing_dir(self._lake) / f"dt={day}" / name)
        marks = pending_dir(self._lake, self._writer)
        marks.mkdir(parents=True, exist_ok=True)
        (marks / name).touch()
        self._files.inc()
        self._rows.inc(len(rows))


class LandMessages(beam.PTransform):
    """Landing rows → the same rows, after each bundle is committed to the landing zone."""

    def __init__(self, lake: str, writer: str, label: str | None = None) -> None:
        super().__init__(label)
        self.lake, self.writer = lake, writer

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return rows | "LandBundle" >> beam.ParDo(_LandFn(self.lake, self.writer))


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
            for row in iter_landing_rows(Path(path)):
                ms = event_time_fn(row["topic"], row["payload"], row["received_ms"])
                # No event time: only a dead letter can come of it; keep it out of the way.
                yield TimestampedValue(row, MIN_TIMESTAMP if ms is None else Timestamp(micros=ms * 1000))

        return pbegin | "Files" >> beam.Create(self.files) | "Rows" >> beam.FlatMap(read)


class _ArchivePaneFn(beam.DoFn):
    def __init__(self, lake: str, writer: str | None) -> None:
        self._lake = lake
        self._writer = writer
        self._files = Metrics.counter(METRICS_NAMESPACE, "archive_files")
        self._rows = Metrics.counter(METRICS_NAMESPACE, "archive_rows")

    def start_bundle(self) -> None:
        self._by_partition: dict[str, list[dict[str, Any]]] = {}

    def process(self, row: dict[str, Any]) -> None:
        self._by_partition.setdefault(partition_of(row["ts_ms"]), []).append(row)

    def finish_bundle(self) -> None:
        parts, self._by_partition = self._by_partition, {}
        for partition, rows in sorted(parts.items()):
            rows.sort(key=lambda r: (r["device_id"], r["boot"], r["seq"], r["received_ms"]))
            digest = _digest(
                f"{r['device_id']}\0{r['boot']}\0{r['seq']}\0{r['received_ms']}".encode() for r in rows
            )
            table = pa.Table.from_pylist(rows, schema=lake_schema())
            final = Path(self._lake) / "records" / partition / f"part-s-{digest}.parquet"
            if self._writer is not None:
                register_output(self._lake, self._writer, final)
            write_atomically(table, final)
            self._files.inc()
            self._rows.inc(len(rows))


class WriteArchivePanes(beam.PTransform):
    """Lake rows → one Parquet file per event-hour partition per bundle, atomically.

    With ``writer``, each file is registered as an output of the running run
    (see the module docstring).
    """

    def __init__(self, lake: str, writer: str | None = None, label: str | None = None) -> None:
        super().__init__(label)
        self.lake, self.writer = lake, writer

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return rows | "WritePanes" >> beam.ParDo(_ArchivePaneFn(self.lake, self.writer))


class _JsonLinesFn(beam.DoFn):
    def __init__(self, folder: str, register: tuple[str, str] | None) -> None:
        self._folder = folder
        self._register = register
        self._files = Metrics.counter(METRICS_NAMESPACE, "jsonl_files")

    def start_bundle(self) -> None:
        self._lines: list[str] = []

    def process(self, line: str) -> None:
        self._lines.append(line)

    def finish_bundle(self) -> None:
        if not self._lines:
            return
        lines, self._lines = sorted(self._lines), []
        data = ("\n".join(lines) + "\n").encode("utf-8")
        final = Path(self._folder) / f"part-{_digest([data])}.jsonl"
        if self._register is not None:
            register_output(*self._register, final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        self._files.inc()


class WriteJsonLinesParts(beam.PTransform):
    """Strings → ``<folder>/part-<hash>.jsonl``, one atomic file per bundle.

    ``register=(lake, writer)`` registers each file as an output of the running run.
    """

    def __init__(
        self, folder: str, *, register: tuple[str, str] | None = None, label: str | None = None
    ) -> None:
        super().__init__(label)
        self.folder, self.register = folder, register

    def expand(self, lines: beam.PCollection) -> beam.PCollection:
        return lines | "WriteParts" >> beam.ParDo(_JsonLinesFn(self.folder, self.register))


def read_json_lines_parts(folder: str | Path) -> list[str]:
    """Every line of every committed part in ``folder`` (hidden temporaries excluded)."""
    root = Path(folder)
    if not root.exists():
        return []
    lines: list[str] = []
    for part in sorted(root.glob("part-*.jsonl")):
        lines.extend(part.read_text("utf-8").splitlines())
    return lines
