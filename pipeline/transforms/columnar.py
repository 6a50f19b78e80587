"""The columnar batch path: landing tables → lake tables → deduplicated → device-hour tables.

    landing tables ─DecodeBatchTables─▶ lake tables (+ dead_letters)       arrow_decode.ArrowDecoder
                   ─DedupeRecordTables(shards)─▶ one table per event hour (× device shard),
                                                 one row per record         ─▶ raw archive
                   ─DeviceHourTables─▶ device-hour tables (DEVICE_HOUR_SCHEMA) ─▶ device_hourly
                   ─DeviceHoursFromTables─▶ DeviceHour                      (Python objects only here)

The same numbers as the per-element transforms (:class:`~.decode.DecodeBatches`
→ :class:`~.dedupe.DedupeRecords` → :class:`~.rollups.DeviceHourlyRollups` in
``batch`` mode), which stay for the streaming job and as the benchmark's
baseline; ``tests/test_columnar_*.py`` hold the two paths to that.

**Why event hours.** Copies of a record are the same record redelivered: they
share its ``device_id`` and its ``ts_ms``. A device-hour is one device's hour.
So the decoded tables are split by event hour (and, with ``shards`` > 1, by a
stable hash of ``device_id`` within the hour) and each group — every record
of its hour, from every landing file and bundle — is deduplicated and rolled
up whole, with pyarrow and numpy, and written to the raw archive as it is:
one shuffle for the three. Nothing is combined across groups. A group is one
hour of the fleet (1/shards of it), so the largest element and the memory of
a step are bounded by the fleet's hourly volume, never by the lake's length;
``shards`` is for fleets whose hour is too big for one worker. Dedupe is
therefore scoped to the event hour, as in the streaming job (whose dedupe
runs in hour windows): two records of a device with the same (boot, seq) in
different hours are not copies (a device that reused its counter) and both
are kept, in both engines.

Dedupe keeps, per (device_id, boot, seq), the copy the per-element
:class:`~.dedupe.PickSurvivorFn` keeps: smallest ``received_ms``, then the
smallest canonical JSON (computed only for copies landed in the same
millisecond). Float sums use ``math.fsum`` exactly as the per-element
combiner does (the sum of one value is the value plus 0.0, which is what
``fsum`` gives); only groups of two or more values reach Python.

The hour shuffle carries Arrow IPC streams as bytes (:func:`table_to_ipc`,
LZ4), not tables: the local FnApiRunner groups in its own process by decoding
and re-encoding every value with the value coder, and bytes pass through it
untouched. Each part is its own ``take`` of its rows (a slice would carry its
parent's buffers into the stream: see
:func:`~fleetpulse.pipeline.lake.storage.compacted`). Other table
PCollections that cross a stage boundary use :class:`ArrowTableCoder` (the
same IPC streams), registered for ``pyarrow.Table``.

Counters keep the per-element paths' names: ``fleetpulse.pipeline.decode``
(received / sent / dropped / dropped_<reason>) and
``fleetpulse.pipeline.dedupe`` (received / sent / duplicates).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from fleetpulse.pipeline.lake.storage import device_shard, table_from_ipc, table_to_ipc
from fleetpulse.pipeline.model import DEVICE_HOUR_SCHEMA, DeviceHour
from fleetpulse.schemas import Contract

from . import decode as decode_module
from . import dedupe as dedupe_module
from .arrow_decode import ArrowDecoder
from .decode import DEAD_LETTERS, dead_letter_row
from .dedupe import _canonical
from .rollups import ERROR_SEVERITIES, HOUR_S

HOUR_MS = HOUR_S * 1000
#: Default device shards of an event hour in the dedupe/rollup grouping (see the module docstring).
DEFAULT_SHARDS = 1
#: Landing messages decoded together (bounds the memory of one decode step).
DEFAULT_CHUNK_MESSAGES = 1000

SEQ_SPAN = DEVICE_HOUR_SCHEMA.field("seq_spans").type.value_type
#: A DeviceHour as an Arrow row: the job's device_hourly Parquet schema, one definition.


# ------------------------------------------------------------------ helpers


def _numpy(column: pa.ChunkedArray | pa.Array, fill: Any = None) -> np.ndarray:
    if fill is not None:
        column = pc.fill_null(column, fill)
    return column.to_numpy() if isinstance(column, pa.ChunkedArray) else column.to_numpy(zero_copy_only=False)


def _codes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Dense integer codes of a string column (equal strings, equal codes; order arbitrary)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return np.asarray(pc.dictionary_encode(array).indices.to_numpy(zero_copy_only=False), dtype=np.int64)


def _runs(*keys: np.ndarray) -> np.ndarray:
    """Where a new run of equal keys starts, over arrays already sorted by those keys."""
    n = len(keys[0])
    start = np.ones(n, dtype=bool)
    if n > 1:
        same = np.ones(n - 1, dtype=bool)
        for key in keys:
            same &= key[1:] == key[:-1]
        start[1:] = ~same
    return start


def shard_of(device_ids: pa.ChunkedArray | pa.Array, shards: int) -> np.ndarray:
    """A stable shard per row, the same in every process (CRC-32 of the device id)."""
    array = device_ids.combine_chunks() if isinstance(device_ids, pa.ChunkedArray) else device_ids
    encoded = pc.dictionary_encode(array)
    per_device = np.fromiter(
        (device_shard(d, shards) for d in encoded.dictionary.to_pylist()),
        dtype=np.int64,
        count=len(encoded.dictionary),
    )
    return per_device[np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)]


def group_keys(table: pa.Table, shards: int) -> np.ndarray:
    """The grouping key of each row: its event hour and device shard, ``hour_index * shards + shard``.

    Copies of a record carry its ``ts_ms`` and ``device_id`` and a
    device-hour is one device's hour, so every group holds every copy of its
    records and whole device-hours (see the module docstring).
    """
    keys = (_numpy(table["ts_ms"]) // HOUR_MS) * shards
    return keys + shard_of(table["device_id"], shards) if shards > 1 else keys


def split_table(table: pa.Table, keys: np.ndarray) -> Iterator[tuple[int, pa.Table]]:
    """``(key, rows with that key)`` for every distinct integer key, in key order.

    Each part is its own ``take`` of its rows, not a slice of an ordered copy:
    a slice shares its parent's buffers, and the IPC stream of a slice that
    starts at a null list still carries the parent's whole child arrays
    (:func:`~fleetpulse.pipeline.lake.storage.compacted`).
    """
    if table.num_rows == 0:
        return
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(_runs(sorted_keys))
    ends = np.append(starts[1:], len(order))
    if len(starts) == 1:
        yield int(sorted_keys[0]), table
        return
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        yield int(sorted_keys[start]), table.take(pa.array(order[start:end]))


# -------------------------------------------------------------------- dedupe


def dedupe_table(table: pa.Table) -> tuple[pa.Table, int]:
    """One row per (device_id, boot, seq, event hour), the survivor the per-element dedupe picks; and
    copies removed.

    Survivors keep their order in ``table``.

    ``table`` must hold every copy of each record it holds (see the module docstring).
    """
    n = table.num_rows
    if n == 0:
        return table, 0
    device = _codes(table["device_id"])
    boot, seq, received = (_numpy(table[name]) for name in ("boot", "seq", "received_ms"))
    hour = _numpy(table["ts_ms"]) // HOUR_MS
    order = np.lexsort((received, seq, boot, hour, device))  # the last key sorts first
    d, h, b, s, r = device[order], hour[order], boot[order], seq[order], received[order]
    first = _runs(d, h, b, s)
    survivors = order[first]
    # Copies landed in the same millisecond as the earliest one: the canonical JSON decides.
    tied = np.zeros(n, dtype=bool)
    tied[1:] = ~first[1:] & (r[1:] == r[:-1])
    if tied.any():
        group = np.cumsum(first) - 1
        # Every copy in the same millisecond as its record's earliest copy, read back at once.
        earliest = r[first][group]
        contender = (r == earliest) & np.isin(group, group[tied])
        at = np.flatnonzero(contender)
        rows = table.take(pa.array(order[at])).to_pylist()
        best: dict[int, tuple[str, int]] = {}
        for position, row in zip(at.tolist(), rows, strict=True):
            g, text = int(group[position]), _canonical(row)
            if g not in best or text < best[g][0]:
                best[g] = (text, position)
        for g, (_, position) in best.items():
            survivors[g] = order[position]
    if len(survivors) == n:
        return table, 0
    # A filter in the input's order: much cheaper than a take in key order, and
    # nothing downstream depends on the order of the survivors.
    keep = np.zeros(n, dtype=bool)
    keep[survivors] = True
    return table.filter(pa.array(keep)), n - len(survivors)


# ------------------------------------------------------------------- rollups


def _keyed_map(
    segment: np.ndarray, keys: pa.Array, values: pa.Array, segments: int, how: str
) -> pa.Array:
    """A map<string, value> per segment: ``how`` ("sum" or "count") of ``values`` by (segment, key)."""
    grouped = (
        pa.table({"segment": segment, "key": keys, "value": values})
        .group_by(["segment", "key"], use_threads=False)
        .aggregate([("value", how)])
        .sort_by([("segment", "ascending"), ("key", "ascending")])
    )
    offsets = np.zeros(segments + 1, dtype=np.int32)
    np.cumsum(np.bincount(_numpy(grouped["segment"]), minlength=segments), out=offsets[1:])
    items = grouped[f"value_{how}"].combine_chunks()
    item_type = pa.float64() if pa.types.is_floating(items.type) else pa.int64()
    return pa.MapArray.from_arrays(
        pa.array(offsets), grouped["key"].combine_chunks(), items.cast(item_type),
        type=pa.map_(pa.string(), item_type),
    )


def _usage_map(table: pa.Table, segment: np.ndarray, usage_rows: np.ndarray, segments: int) -> pa.Array:
    """Per segment, quantity_key → math.fsum of the values (see the module docstring)."""
    quantities = table["quantities"].take(pa.array(usage_rows)).combine_chunks()
    flat = pc.list_flatten(quantities)
    parent = np.asarray(pc.list_parent_indices(quantities).to_numpy(zero_copy_only=False), dtype=np.int64)
    keys = pc.binary_join_element_wise(flat.field("name"), flat.field("unit"), "_")
    parts = pa.table(
        {"segment": segment[usage_rows][parent], "key": keys, "value": flat.field("value")}
    ).sort_by([("segment", "ascending"), ("key", "ascending")])
    seg = _numpy(parts["segment"])
    starts = np.flatnonzero(_runs(seg, _codes(parts["key"])))
    sizes = np.diff(np.append(starts, parts.num_rows))
    values = _numpy(parts["value"])
    sums = values[starts] + 0.0  # fsum of one value: the value, with -0.0 made 0.0
    several = np.flatnonzero(sizes > 1)
    if len(several):
        as_list = values.tolist()
        for g, start, size in zip(several.tolist(), starts[several].tolist(), sizes[several].tolist(), strict=True):
            sums[g] = math.fsum(as_list[start : start + size])
    offsets = np.zeros(segments + 1, dtype=np.int32)
    np.cumsum(np.bincount(seg[starts], minlength=segments), out=offsets[1:])
    return pa.MapArray.from_arrays(
        pa.array(offsets), parts["key"].combine_chunks().take(pa.array(starts)), pa.array(sums),
        type=pa.map_(pa.string(), pa.float64()),
    )


def _seq_spans(segment: np.ndarray, boot: np.ndarray, seq: np.ndarray, segments: int) -> pa.Array:
    grouped = (
        pa.table({"segment": segment, "boot": boot, "seq": seq})
        .group_by(["segment", "boot"], use_threads=False)
        .aggregate([("seq", "min"), ("seq", "max"), ("seq", "count")])
        .sort_by([("segment", "ascending"), ("boot", "ascending")])
    )
    offsets = np.zeros(segments + 1, dtype=np.int32)
    np.cumsum(np.bincount(_numpy(grouped["segment"]), minlength=segments), out=offsets[1:])
    spans = pa.StructArray.from_arrays(
        [grouped[name].combine_chunks().cast(pa.int64()) for name in ("boot", "seq_min", "seq_max", "seq_count")],
        fields=list(SEQ_SPAN),
    )
    return pa.ListArray.from_arrays(pa.array(offsets), spans, type=pa.list_(SEQ_SPAN))


def device_hour_table(table: pa.Table) -> pa.Table:
    """Deduplicated lake rows → one DEVICE_HOUR_SCHEMA row per (customer, site, gateway, device, hour).

    ``table`` must hold every record of each of its device-hours (a group from
    :class:`DedupeRecordTables`); the numbers equal :class:`~.rollups.DeviceHourFn`'s.
    """
    n = table.num_rows
    if n == 0:
        return DEVICE_HOUR_SCHEMA.empty_table()
    ts = _numpy(table["ts_ms"])
    hour = ts - ts % HOUR_MS
    who = _codes(
        pc.binary_join_element_wise(
            *(table[name] for name in ("customer_id", "site_id", "gateway_id", "device_id")), "\x1f"
        )
    )
    boot, seq = _numpy(table["boot"]), _numpy(table["seq"])
    # Within a device-hour, rows by (ts_ms, boot, seq): the last one is the latest record.
    order = np.lexsort((seq, boot, ts, hour, who))
    start = _runs(who[order], hour[order])
    starts = np.flatnonzero(start)
    segments = len(starts)
    segment = np.empty(n, dtype=np.int64)
    segment[order] = np.cumsum(start) - 1  # per original row
    last = order[np.append(starts[1:], n) - 1]
    first = order[starts]

    kind = table["kind"]
    is_heartbeat = _numpy(pc.equal(kind, "heartbeat"))
    is_usage = _numpy(pc.equal(kind, "usage"))
    is_feature = _numpy(pc.equal(kind, "feature"))
    is_error = _numpy(pc.equal(kind, "error")) & _numpy(
        pc.is_in(table["severity"], value_set=pa.array(sorted(ERROR_SEVERITIES))), fill=False
    )
    is_critical = is_error & _numpy(pc.equal(table["severity"], "critical"), fill=False)

    def per_segment(values: np.ndarray) -> np.ndarray:
        # Integer sums over the sorted rows: exact, unlike bincount's float weights.
        return np.add.reduceat(values[order].astype(np.int64), starts)

    # The latest heartbeat's interval: the heartbeat row that sorts last in its segment.
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    heartbeat_at = np.full(segments, -1, dtype=np.int64)
    np.maximum.at(heartbeat_at, segment[is_heartbeat], position[is_heartbeat])
    interval = np.where(heartbeat_at >= 0, _numpy(table["interval_s"], fill=0)[order[heartbeat_at]], 0)
    expected = np.divide(HOUR_S, interval, out=np.zeros(segments, dtype=np.float64), where=interval > 0)

    count = _numpy(table["count"], fill=0)
    feature_rows, error_rows = np.flatnonzero(is_feature), np.flatnonzero(is_error)
    take = pa.array
    columns = {
        "customer_id": table["customer_id"].take(take(first)),
        "site_id": table["site_id"].take(take(first)),
        "gateway_id": table["gateway_id"].take(take(first)),
        "device_id": table["device_id"].take(take(first)),
        "hour_ms": take(hour[first]),
        "records": take(np.diff(np.append(starts, n))),
        "heartbeats": take(per_segment(is_heartbeat)),
        "expected_heartbeats": take(expected),
        "usage_records": take(per_segment(is_usage)),
        "feature_uses": take(per_segment(np.where(is_feature, count, 0))),
        "errors": take(per_segment(is_error)),
        "critical_errors": take(per_segment(is_critical)),
        "usage": _usage_map(table, segment, np.flatnonzero(is_usage), segments),
        "features": _keyed_map(
            segment[feature_rows], table["feature"].take(take(feature_rows)),
            take(count[feature_rows]), segments, "sum",
        ),
        "error_fw": _keyed_map(
            segment[error_rows], table["fw"].take(take(error_rows)),
            take(np.ones(len(error_rows), dtype=np.int64)), segments, "sum",
        ),
        "fw": table["fw"].take(take(last)),
        "last_ts_ms": take(ts[last]),
        "seq_spans": _seq_spans(segment, boot, seq, segments),
    }
    return pa.Table.from_arrays(
        [columns[f.name] for f in DEVICE_HOUR_SCHEMA], schema=DEVICE_HOUR_SCHEMA
    )


def device_hours_from_table(table: pa.Table) -> list[DeviceHour]:
    """DEVICE_HOUR_SCHEMA rows → DeviceHour objects (maps in key order, spans by boot)."""
    columns = [table[name].to_pylist() for name in DEVICE_HOUR_SCHEMA.names]
    hours = []
    names = DEVICE_HOUR_SCHEMA.names
    for row in zip(*columns, strict=True):
        values = dict(zip(names, row, strict=True))
        values["usage"] = dict(values["usage"])
        values["features"] = dict(values["features"])
        values["error_fw"] = dict(values["error_fw"])
        values["seq_spans"] = {s["boot"]: (s["min_seq"], s["max_seq"], s["records"]) for s in values["seq_spans"]}
        hours.append(DeviceHour(**values))
    return hours


# The table's columns are the dataclass's fields, in order: a new DeviceHour field goes in both.
assert DEVICE_HOUR_SCHEMA.names == [f.name for f in dataclasses.fields(DeviceHour)]


# ---------------------------------------------------------------- composites


class ArrowTableCoder(beam.coders.Coder):
    """Arrow tables between Beam stages as Arrow IPC streams (:func:`table_to_ipc`).

    Beam would otherwise pickle them: more bytes, slower both ways, and a
    pickled slice carries its parent's buffers. Registered for ``pa.Table``.
    """

    def encode(self, value: pa.Table) -> bytes:
        return table_to_ipc(value)

    def decode(self, encoded: bytes) -> pa.Table:
        return table_from_ipc(encoded)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self) -> type:
        return pa.Table


beam.coders.registry.register_coder(pa.Table, ArrowTableCoder)


class _DecodeTablesFn(beam.DoFn):
    """Landing tables → lake tables and tagged dead-letter rows. Never raises on bad input."""

    def __init__(self, contract: Contract | None, chunk_messages: int) -> None:
        self._contract = contract
        self._chunk = chunk_messages
        ns = decode_module.METRICS_NAMESPACE
        self._received = Metrics.counter(ns, "received")
        self._sent = Metrics.counter(ns, "sent")
        self._dropped = Metrics.counter(ns, "dropped")

    def setup(self) -> None:
        self._decoder = ArrowDecoder(self._contract)

    def process(self, landing: pa.Table) -> Iterator[Any]:
        for offset in range(0, landing.num_rows, self._chunk):
            part = landing.slice(offset, self._chunk)
            decoded = self._decoder.decode(
                part["topic"].to_pylist(), part["payload"].to_pylist(), part["received_ms"].to_pylist()
            )
            self._received.inc(decoded.messages)
            reasons: dict[str, int] = {}
            for dead in decoded.dead:
                reasons[dead[0].reason] = reasons.get(dead[0].reason, 0) + 1
                yield pvalue.TaggedOutput(DEAD_LETTERS, dead_letter_row(dead))
            if decoded.dead:
                self._dropped.inc(len(decoded.dead))
            for reason, count in reasons.items():
                Metrics.counter(decode_module.METRICS_NAMESPACE, f"dropped_{reason}").inc(count)
            if decoded.table.num_rows:
                self._sent.inc(decoded.table.num_rows)
                yield decoded.table


class DecodeBatchTables(beam.PTransform):
    """Landing tables (topic, payload, received_ms) → ``main`` lake tables and ``dead_letters`` rows.

    The columnar :class:`~.decode.DecodeBatches`: the same rows, reasons and
    counters. Use as ``decoded = tables | DecodeBatchTables()``, then
    ``decoded.main`` / ``decoded[DEAD_LETTERS]``.
    """

    def __init__(
        self,
        contract: Contract | None = None,
        *,
        chunk_messages: int = DEFAULT_CHUNK_MESSAGES,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        if chunk_messages < 1:
            raise ValueError(f"chunk_messages must be at least 1, got {chunk_messages}")
        self._contract = contract
        self._chunk = chunk_messages

    def expand(self, landing: beam.PCollection) -> pvalue.DoOutputsTuple:
        return landing | "Validate" >> beam.ParDo(
            _DecodeTablesFn(self._contract, self._chunk)
        ).with_outputs(DEAD_LETTERS, main="main")


class _KeyByHourFn(beam.DoFn):
    def __init__(self, shards: int) -> None:
        self._shards = shards
        self._received = Metrics.counter(dedupe_module.METRICS_NAMESPACE, "received")

    def process(self, table: pa.Table) -> Iterator[tuple[int, bytes]]:
        self._received.inc(table.num_rows)
        for key, part in split_table(table, group_keys(table, self._shards)):
            # Bytes, not tables, through the shuffle: the local runner groups in its own
            # process by decoding and re-encoding every value with the value coder.
            yield key, table_to_ipc(part)


class _DedupeShardFn(beam.DoFn):
    def __init__(self) -> None:
        self._sent = Metrics.counter(dedupe_module.METRICS_NAMESPACE, "sent")
        self._duplicates = Metrics.counter(dedupe_module.METRICS_NAMESPACE, "duplicates")

    def process(self, keyed: tuple[int, Iterable[bytes]]) -> Iterator[pa.Table]:
        _, parts = keyed
        table, duplicates = dedupe_table(pa.concat_tables([table_from_ipc(p) for p in parts]))
        self._sent.inc(table.num_rows)
        if duplicates:
            self._duplicates.inc(duplicates)
        yield table


class DedupeRecordTables(beam.PTransform):
    """Lake tables → one deduplicated table per event hour and device shard.

    The columnar :class:`~.dedupe.DedupeRecords` for batch: each output table
    holds every record of its device-hours, for :class:`DeviceHourTables` and
    the raw archive (:class:`~fleetpulse.pipeline.lake.archive.WriteArchiveTables`)
    without another shuffle; its size is bounded by one hour of the fleet
    (or 1/shards of it), not by the lake.
    """

    def __init__(self, shards: int = DEFAULT_SHARDS, label: str | None = None) -> None:
        super().__init__(label)
        if shards < 1:
            raise ValueError(f"shards must be at least 1, got {shards}")
        self._shards = shards

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        return (
            tables
            | "KeyByHour" >> beam.ParDo(_KeyByHourFn(self._shards)).with_output_types(tuple[int, bytes])
            | "GroupHour" >> beam.GroupByKey()
            | "PickSurvivors" >> beam.ParDo(_DedupeShardFn()).with_output_types(pa.Table)
        )


class DeviceHourTables(beam.PTransform):
    """Hour tables from :class:`DedupeRecordTables` → DEVICE_HOUR_SCHEMA tables."""

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        return tables | "RollUp" >> beam.Map(device_hour_table).with_output_types(pa.Table)


class DeviceHoursFromTables(beam.PTransform):
    """DEVICE_HOUR_SCHEMA tables → :class:`DeviceHour` elements (for the per-customer steps)."""

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        return tables | "ToDeviceHour" >> beam.FlatMap(device_hours_from_table)
