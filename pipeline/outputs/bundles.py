"""The streaming job's file sinks: one atomic file per bundle, named by its content.

A stream never ends, so its files are written as it goes: each DoFn buffers a
bundle's elements and commits them in ``finish_bundle`` with
:func:`commit_bytes`, which writes a hidden temporary name in the same folder
and renames it into place. A reader never sees a partial file. The file name
is a hash of the content, so a bundle the runner retries after a failure
writes the same name again (replacing, not adding a copy).

Paths are local folders or any Beam file system (``gs://…``). Locally the
commit is fsync + ``os.replace`` + an fsync of the folder (the file survives a
power cut once the rename is done); elsewhere it goes through
:class:`~apache_beam.io.filesystems.FileSystems`: ``create`` the temporary
object, then ``rename`` it (an object store's rename is copy + delete, so the
final object appears whole, or not at all).

* :class:`LandMessages` — the write-ahead landing: raw broker messages to
  ``<lake>/landing/`` (batches) and ``<lake>/status/`` (gateway status), the
  zones ``fleetpulse backfill`` reads, before the
  source acknowledges them. Fused with the source, it runs inside the
  source's bundle, so the bundle finalizer (the PUBACK) comes after the
  commit: an acknowledged message is stored even if the runner's memory is lost.
* :class:`WriteArchivePanes` — validated, deduplicated records to
  ``<lake>/records/dt=YYYY-MM-DD/hour=HH/part-s-<hash>.parquet`` (event hour).
* :class:`WriteJsonLinesParts` — strings to ``<folder>/part-<hash>.jsonl``
  (dead letters, alerts).
* :class:`WriteParquetParts` — table rows to ``<folder>/part-p<pane>-<hash>.parquet``
  (signals, device hours), the pane index telling restatements apart.

**The replay registry** (only on runners that keep committed bundles in
memory, see :func:`keeps_bundles_in_memory`). The FnApiRunner acks a bundle
once it holds the bundle's output in memory; a killed run loses what it had
not yet written downstream. So each landing file also leaves a *pending*
marker under ``<lake>/ingest/<writer>/pending/``, and outputs derived from
the stream (archive panes, JSON-lines parts) are registered under
``<lake>/ingest/<writer>/outputs/`` before they are written. A run that ends
cleanly clears both (:func:`clear_pending`); the next run after a kill deletes
the registered outputs (:func:`rollback_unfinished_outputs`) and replays the
pending landing files (:class:`ReplayLanding`), so a restart rebuilds them
once instead of adding a second copy beside them. The registry goes through
FileSystems too, so a local run may keep its lake in an object store.

A runner that persists committed bundles (Dataflow, Flink, …) never loses a
committed bundle, so there is nothing to replay; and such a job never "ends
cleanly" from the launcher's point of view, so its markers would only pile
up (and make a later local run replay the whole history). The composites
therefore skip the registry when their pipeline's runner is not one of
:data:`IN_MEMORY_RUNNERS`; the landing itself is still written (the backfill
reads it) unless the job runs with ``--no-land``.
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
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from fleetpulse.pipeline.lake.archive import partition_of
from fleetpulse.pipeline.lake.landing import LANDING_SCHEMA, zone_of
from fleetpulse.pipeline.lake.schema import lake_schema
from fleetpulse.pipeline.lake.storage import commit_bytes, is_remote, join, parquet_bytes

METRICS_NAMESPACE = "fleetpulse.pipeline.ingest_files"

#: runners (class names) that keep committed bundles in memory, in this process:
#: the replay registry exists for them. Every other runner is taken to persist them.
IN_MEMORY_RUNNERS = frozenset({
    "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner", "TestDirectRunner",
    "FnApiRunner", "PrismRunner",
})
#: the same runners as ``--runner`` accepts them (lower case, ``Runner`` suffix optional)
_IN_MEMORY_NAMES = frozenset(
    {name.lower() for name in IN_MEMORY_RUNNERS} | {name.lower().removesuffix("runner") for name in IN_MEMORY_RUNNERS}
)


def keeps_bundles_in_memory(runner: object) -> bool:
    """Whether ``runner`` (a runner, its class name or a ``--runner`` value) keeps committed
    bundles only in memory; None is Beam's default, the DirectRunner (in memory)."""
    if runner is None:
        return True
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.rsplit(".", 1)[-1].lower() in _IN_MEMORY_NAMES


def _registry_on(pcoll: beam.PCollection) -> bool:
    return keeps_bundles_in_memory(pcoll.pipeline.runner)


def _matching(pattern: str) -> list[str]:
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def _basename(path: str) -> str:
    return FileSystems.split(path)[1] if is_remote(path) else os.path.basename(path)


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:24]


def landing_folder(lake: str | Path, zone: str = "landing") -> str:
    """``<lake>/<zone>`` (``landing`` or ``status``: the zones ``backfill`` reads), local or remote."""
    return join(lake, zone)


def pending_dir(lake: str | Path, writer: str) -> Path:
    """Where a writer's not-yet-processed landing files are marked (local lake; see :func:`join`)."""
    return Path(lake) / "ingest" / writer / "pending"


def outputs_dir(lake: str | Path, writer: str) -> Path:
    """Where the outputs of a writer's unfinished run are registered (local lake)."""
    return Path(lake) / "ingest" / writer / "outputs"


def _marks(lake: str | Path, writer: str, kind: str) -> str:
    return join(lake, "ingest", writer, kind)


def _touch(path: str, text: str = "") -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(text.encode("utf-8"))


#: a pending marker of a file in another zone than ``landing`` is named ``<zone>~<file name>``
_ZONE_MARK = "~"


def mark_pending(lake: str | Path, writer: str, landing_file: str, zone: str = "landing") -> None:
    """Record ``landing_file`` (of ``zone``) as landed by ``writer`` and not yet processed by a finished run."""
    name = _basename(landing_file)
    _touch(join(_marks(lake, writer, "pending"), name if zone == "landing" else f"{zone}{_ZONE_MARK}{name}"))


def _landing_file(lake: str | Path, writer: str, rows: list[dict[str, Any]], zone: str = "landing") -> str:
    """The landing file of a bundle's rows of ``zone``: named by its first arrival time, writer and content."""
    first = min(r["received_ms"] for r in rows)
    digest = _digest(r["topic"].encode() + b"\0" + r["payload"] for r in rows)
    return _landing_path(lake, f"part-{first:013d}-{writer}-{digest}.parquet", zone)


def _landing_path(lake: str | Path, name: str, zone: str = "landing") -> str:
    # The day folder follows from the name (its first arrival time): no listing needed.
    first = int(name.split("-", 2)[1])
    day = datetime.fromtimestamp(first / 1000, tz=UTC).strftime("%Y-%m-%d")
    return join(landing_folder(lake, zone), f"dt={day}", name)


def _marked_path(lake: str | Path, mark: str) -> str:
    zone, _, name = mark.rpartition(_ZONE_MARK)
    return _landing_path(lake, name, zone or "landing")


def pending_landing_files(lake: str | Path, writer: str) -> list[str]:
    """Files (of every zone) written by ``writer`` whose run did not end cleanly, oldest first."""
    marks = sorted((_basename(m) for m in _matching(join(_marks(lake, writer, "pending"), "*"))),
                   key=lambda mark: mark.rpartition(_ZONE_MARK)[2])
    return [path for path in (_marked_path(lake, mark) for mark in marks) if FileSystems.exists(path)]


def register_output(lake: str | Path, writer: str, path: str | Path) -> None:
    """Record ``path`` as an output of the running (not yet finished) run; call before writing it."""
    text = str(path) if is_remote(path) else str(Path(path).resolve())
    _touch(join(_marks(lake, writer, "outputs"), hashlib.sha256(text.encode()).hexdigest()[:32]), text)


def rollback_unfinished_outputs(lake: str | Path, writer: str) -> int:
    """Delete every output a killed run registered (its inputs are replayed); returns how many."""
    removed = 0
    for mark in _matching(join(_marks(lake, writer, "outputs"), "*")):
        with FileSystems.open(mark, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            output = handle.read().decode("utf-8")
        if FileSystems.exists(output):
            FileSystems.delete([output])
            removed += 1
        FileSystems.delete([mark])
    return removed


def clear_pending(lake: str | Path, writer: str) -> int:
    """A run ended cleanly: forget its pending landing files and outputs; returns how many."""
    marks = [m for kind in ("pending", "outputs") for m in _matching(join(_marks(lake, writer, kind), "*"))]
    if marks:
        FileSystems.delete(marks)
    return len(marks)


class _LandFn(beam.DoFn):
    def __init__(self, lake: str, writer: str, registry: bool) -> None:
        self._lake = lake
        self._writer = writer
        self._registry = registry
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
        by_zone: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_zone.setdefault(zone_of(row["topic"]), []).append(row)
        # One file per zone: batches where the backfill decodes them, status where it reads gateway status.
        for zone, zone_rows in sorted(by_zone.items()):
            table = pa.Table.from_pylist(
                [{"topic": r["topic"], "payload": r["payload"], "received_ms": r["received_ms"]} for r in zone_rows],
                schema=LANDING_SCHEMA,
            )
            final = _landing_file(self._lake, self._writer, zone_rows, zone)
            commit_bytes(final, parquet_bytes(table))
            if self._registry:
                mark_pending(self._lake, self._writer, final, zone)
            self._files.inc()
        self._rows.inc(len(rows))


class LandMessages(beam.PTransform):
    """Landing rows → the same rows, after each bundle is committed to the landing zone.

    On a runner that keeps bundles in memory each file is also marked pending
    (see the module docstring).
    """

    def __init__(self, lake: str, writer: str, label: str | None = None) -> None:
        super().__init__(label)
        self.lake, self.writer = lake, writer

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return rows | "LandBundle" >> beam.ParDo(_LandFn(self.lake, self.writer, _registry_on(rows)))


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
            final = join(self._lake, "records", *partition.split("/"), f"part-s-{digest}.parquet")
            if self._writer is not None:
                register_output(self._lake, self._writer, final)
            commit_bytes(final, parquet_bytes(table))
            self._files.inc()
            self._rows.inc(len(rows))


class WriteArchivePanes(beam.PTransform):
    """Lake rows → one Parquet file per event-hour partition per bundle, atomically.

    With ``writer``, each file is registered as an output of the running run
    (on a runner that keeps bundles in memory; see the module docstring).
    """

    def __init__(self, lake: str, writer: str | None = None, label: str | None = None) -> None:
        super().__init__(label)
        self.lake, self.writer = lake, writer

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        writer = self.writer if _registry_on(rows) else None
        return rows | "WritePanes" >> beam.ParDo(_ArchivePaneFn(self.lake, writer))


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
        final = join(self._folder, f"part-{_digest([data])}.jsonl")
        if self._register is not None:
            register_output(*self._register, final)
        commit_bytes(final, data)
        self._files.inc()


class WriteJsonLinesParts(beam.PTransform):
    """Strings → ``<folder>/part-<hash>.jsonl``, one atomic file per bundle.

    ``register=(lake, writer)`` registers each file as an output of the running
    run (on a runner that keeps bundles in memory).
    """

    def __init__(
        self, folder: str, *, register: tuple[str, str] | None = None, label: str | None = None
    ) -> None:
        super().__init__(label)
        self.folder, self.register = folder, register

    def expand(self, lines: beam.PCollection) -> beam.PCollection:
        register = self.register if _registry_on(lines) else None
        return lines | "WriteParts" >> beam.ParDo(_JsonLinesFn(self.folder, register))


class _ParquetPartsFn(beam.DoFn):
    def __init__(self, folder: str, schema: pa.Schema, register: tuple[str, str] | None) -> None:
        self._folder, self._schema, self._register = folder, schema, register
        self._files = Metrics.counter(METRICS_NAMESPACE, "parquet_files")

    def start_bundle(self) -> None:
        self._by_pane: dict[int, list[dict[str, Any]]] = {}

    def process(self, row: dict[str, Any], pane: Any = beam.DoFn.PaneInfoParam) -> None:
        self._by_pane.setdefault(pane.index, []).append(row)

    def finish_bundle(self) -> None:
        panes, self._by_pane = self._by_pane, {}
        for index, rows in sorted(panes.items()):
            data = parquet_bytes(pa.Table.from_pylist(rows, schema=self._schema))
            final = join(self._folder, f"part-p{index:06d}-{_digest([data])}.parquet")
            if self._register is not None:
                register_output(*self._register, final)
            commit_bytes(final, data)
            self._files.inc()


class WriteParquetParts(beam.PTransform):
    """Rows (dicts matching ``schema``) → ``<folder>/part-p<pane>-<hash>.parquet``, one atomic file
    per bundle and pane.

    A window fires again when late data restates it, and an accumulating pane
    holds the whole window: the pane index in the name tells a reader which
    version of a row is the latest (:func:`fleetpulse.pipeline.outputs.tables.latest_pane_rows`).
    ``register`` as for :class:`WriteJsonLinesParts`.
    """

    def __init__(
        self, folder: str, schema: pa.Schema, *, register: tuple[str, str] | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        self.folder, self.schema, self.register = folder, schema, register

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        register = self.register if _registry_on(rows) else None
        return rows | "WriteParts" >> beam.ParDo(_ParquetPartsFn(self.folder, self.schema, register))


def read_json_lines_parts(folder: str | Path) -> list[str]:
    """Every line of every committed part in ``folder`` (hidden temporaries excluded)."""
    lines: list[str] = []
    for part in _matching(join(folder, "part-*.jsonl")):
        with FileSystems.open(part, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            lines.extend(handle.read().decode("utf-8").splitlines())
    return lines
