"""DedupeRecords: one lake row per (device_id, boot, seq) and event hour.

Delivery is at-least-once from the device to the pipeline (a gateway resends
a batch it never saw acknowledged; a lake backfill may overlap a live run),
so the same record can arrive several times. The contract makes
``(device_id, boot, seq)`` unique per record; the survivor among copies is
chosen deterministically — smallest ``received_ms``, then the smallest
canonical JSON — so a replay keeps the same row as the original run.

Copies of a record are the same record redelivered, so they share its
``ts_ms``: the key holds the event hour too, as the columnar engine's hour
groups and the streaming job's hour windows do (two records of a device with
the same (boot, seq) in different hours are not copies but a device that
reused its counter, and both are kept, in every engine).

Dedupe happens within the input's windows: the global window in batch (every
copy anywhere in the input collapses), event-time windows in streaming (the
builder windows the rows first, e.g. ``WithEventTime()`` +
``beam.WindowInto(FixedWindows(3600), ...)``; copies of one record carry the
same ``ts_ms`` and so always meet in the same window). The survivor keeps the
earliest element timestamp of its copies (``OUTPUT_AT_EARLIEST``) rather than
the end of the window, so event-time steps after it see no artificially late
data.

Counters (namespace :data:`METRICS_NAMESPACE`): ``received`` rows, ``sent``
rows, ``duplicates`` (copies removed; received = sent + duplicates).
"""

from __future__ import annotations

import json
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampCombiner

METRICS_NAMESPACE = "fleetpulse.pipeline.dedupe"


HOUR_MS = 3_600_000


def record_key(row: dict[str, Any]) -> tuple[str, int, int, int]:
    """The identity of a record: device, boot, sequence number and event hour (see the module docstring)."""
    return (row["device_id"], row["boot"], row["seq"], row["ts_ms"] // HOUR_MS)


def _canonical(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, separators=(",", ":"), default=repr)


def _preferred(a: dict[str, Any], b: dict[str, Any] | None) -> bool:
    """Whether copy ``a`` should survive rather than ``b``: a strict total order."""
    if b is None:
        return True
    if a["received_ms"] != b["received_ms"]:
        return bool(a["received_ms"] < b["received_ms"])
    # Only copies landed in the same millisecond pay for serialising.
    return _canonical(a) < _canonical(b)


Survivor = tuple[int, dict[str, Any] | None]  # (copies seen, preferred copy)


class PickSurvivorFn(beam.CombineFn):
    """Counts the copies of one record and keeps the preferred one; associative and commutative."""

    def create_accumulator(self) -> Survivor:
        return (0, None)

    def add_input(self, accumulator: Survivor, row: dict[str, Any]) -> Survivor:
        count, best = accumulator
        return (count + 1, row if _preferred(row, best) else best)

    def merge_accumulators(self, accumulators: Any) -> Survivor:
        count, best = 0, None
        for other_count, other in accumulators:
            count += other_count
            if other is not None and _preferred(other, best):
                best = other
        return (count, best)

    def extract_output(self, accumulator: Survivor) -> Survivor:
        return accumulator


class _EmitSurvivorFn(beam.DoFn):
    def __init__(self) -> None:
        self._sent = Metrics.counter(METRICS_NAMESPACE, "sent")
        self._duplicates = Metrics.counter(METRICS_NAMESPACE, "duplicates")

    def process(self, keyed: tuple[Any, Survivor]) -> Any:
        _, (count, survivor) = keyed
        if survivor is None:  # a key exists only because a row had it
            return
        self._sent.inc()
        if count > 1:
            self._duplicates.inc(count - 1)
        yield survivor


class _CountReceivedFn(beam.DoFn):
    def __init__(self) -> None:
        self._received = Metrics.counter(METRICS_NAMESPACE, "received")

    def process(self, row: dict[str, Any]) -> Any:
        self._received.inc()
        yield (record_key(row), row)


class DedupeRecords(beam.PTransform):
    """Lake rows → the same rows with copies of a (device_id, boot, seq) in an event hour removed."""

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        windowing = rows.windowing
        if not windowing.is_default():
            # Same windows, trigger and lateness as the input; only the output
            # timestamp of the grouping changes (see the module docstring).
            # In the default global window (batch) timestamps do not decide
            # anything downstream, and keeping the windowing default lets the
            # runner use its fast batch grouping instead of the general
            # trigger machinery (about 10x slower per element).
            rows = rows | "KeepEventTime" >> beam.WindowInto(
                windowing.windowfn,
                trigger=windowing.triggerfn,
                accumulation_mode=windowing.accumulation_mode,
                timestamp_combiner=TimestampCombiner.OUTPUT_AT_EARLIEST,
                allowed_lateness=windowing.allowed_lateness,
            )
        return (
            rows
            | "KeyByRecord" >> beam.ParDo(_CountReceivedFn())
            | "PickSurvivor" >> beam.CombinePerKey(PickSurvivorFn())
            | "Emit" >> beam.ParDo(_EmitSurvivorFn())
        )
