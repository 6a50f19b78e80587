"""Event-time rollups: lake rows → DeviceHour → CustomerDay.

    rows ──WithEventTime──WindowByEventTime(1 h)──DeviceHourFn per device──▶ DeviceHour
    DeviceHour ──(re-stamped at hour_ms)──WindowByEventTime(1 d)──CustomerDayFn per customer──▶ CustomerDay

Both steps window on *event time* (the record's ``ts_ms``), never on arrival
time, so a batch backfill over the lake and the live streaming run put a
record in the same hour and day. Batch and streaming differ only in the
window policy handed to the composites: ``allowed_lateness_s`` and
``trigger`` (the default — fire once when the watermark passes the end of the
window, no lateness — is what batch needs).

Panes accumulate by default: when late data fires a window again, the new pane
restates the whole hour (or day) instead of carrying only the late records.
Downstream writes are keyed by series + window start, so a restated pane
overwrites the earlier one. The daily combine keeps, per (device, hour), only
the largest restatement it has seen, so accumulating hourly panes are not
counted twice in the day.

Sums of floats use ``math.fsum`` over the inputs, so the result does not
depend on the order in which a runner delivers records (a backfill and the
live run give the same numbers, to the last bit).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
from apache_beam.transforms.trigger import AccumulationMode, TriggerFn
from apache_beam.transforms.window import FixedWindows, TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from fleetpulse.pipeline.model import CustomerDay, DeviceHour, quantity_key
from fleetpulse.schemas import load_contract

HOUR_S = 3600
DAY_S = 86400
#: severities that count as errors in health: the contract's, from "error" up (info and warning do not)
_SEVERITIES = load_contract().severities
ERROR_SEVERITIES = frozenset(_SEVERITIES[_SEVERITIES.index("error"):])


def event_timestamp(ts_ms: int) -> Timestamp:
    """A Beam timestamp from epoch milliseconds, exactly (no float rounding)."""
    return Timestamp(micros=ts_ms * 1000)


def utc_day(epoch_ms: int) -> str:
    """The ISO UTC date of an epoch-millisecond instant."""
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).date().isoformat()


def _stamp_row(row: dict[str, Any]) -> TimestampedValue:
    return TimestampedValue(row, event_timestamp(row["ts_ms"]))


def _stamp_hour(hour: DeviceHour) -> TimestampedValue:
    return TimestampedValue(hour, event_timestamp(hour.hour_ms))


class WithEventTime(beam.PTransform):
    """Lake rows re-stamped with their event time (``ts_ms``) as element timestamp."""

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return rows | "StampTsMs" >> beam.Map(_stamp_row)


#: How the rollups group by time. ``event_time``: fixed event-time windows that
#: fire on the watermark (streaming; late data restates a window). ``batch``:
#: the global window, the window start carried in the key — the same groups and
#: numbers, but the runner's fast batch grouping instead of the general trigger
#: machinery. Both key by the window start, so the output is identical.
WINDOW_MODES = ("event_time", "batch")


def _floor(epoch_ms: int, size_s: int) -> int:
    return epoch_ms - epoch_ms % (size_s * 1000)


class WindowByEventTime(beam.PTransform):
    """The window policy, in one place: fixed event-time windows plus lateness and trigger.

    ``trigger=None`` fires once per window when the watermark passes its end
    (and once more per late element within ``allowed_lateness_s``). Panes
    accumulate unless ``accumulation_mode`` says otherwise, see the module
    docstring.
    """

    def __init__(
        self,
        size_s: int,
        *,
        allowed_lateness_s: int = 0,
        trigger: TriggerFn | None = None,
        accumulation_mode: Any = None,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        self.size_s = size_s
        self.allowed_lateness_s = allowed_lateness_s
        self.trigger = trigger
        self.accumulation_mode = (
            AccumulationMode.ACCUMULATING if accumulation_mode is None else accumulation_mode
        )

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Window" >> beam.WindowInto(
            FixedWindows(self.size_s),
            trigger=self.trigger,
            accumulation_mode=self.accumulation_mode,
            allowed_lateness=Duration(seconds=self.allowed_lateness_s),
        )


# ------------------------------------------------------------------ hourly


@dataclass
class HourAccumulator:
    """Partial DeviceHour; every field merges associatively and commutatively."""

    records: int = 0
    heartbeats: int = 0
    usage_records: int = 0
    feature_uses: int = 0
    errors: int = 0
    critical_errors: int = 0
    usage: dict[str, list[float]] = field(default_factory=dict)  # summed with fsum at the end
    features: dict[str, int] = field(default_factory=dict)
    error_fw: dict[str, int] = field(default_factory=dict)
    latest: tuple[int, int, int, str] | None = None  # (ts_ms, boot, seq, fw) of the latest record
    latest_heartbeat: tuple[int, int, int, int] | None = None  # (ts_ms, boot, seq, interval_s)
    seq_spans: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # boot -> (min, max, count)


def merge_span(
    spans: dict[int, tuple[int, int, int]], boot: int, low: int, high: int, count: int
) -> None:
    """Fold one (lowest, highest, records) span of a boot into ``spans``."""
    seen = spans.get(boot)
    spans[boot] = (low, high, count) if seen is None else (
        min(seen[0], low), max(seen[1], high), seen[2] + count)


def _later(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _add_counts(into: dict[str, int], other: dict[str, int]) -> None:
    for name, count in other.items():
        into[name] = into.get(name, 0) + count


class DeviceHourFn(beam.CombineFn):
    """Combines one device's lake rows of one hour into the parts of a DeviceHour."""

    def create_accumulator(self) -> HourAccumulator:
        return HourAccumulator()

    def add_input(self, acc: HourAccumulator, row: dict[str, Any]) -> HourAccumulator:
        acc.records += 1
        merge_span(acc.seq_spans, row["boot"], row["seq"], row["seq"], 1)
        order = (row["ts_ms"], row["boot"], row["seq"])
        acc.latest = _later(acc.latest, (*order, row["fw"]))
        kind = row["kind"]
        if kind == "heartbeat":
            acc.heartbeats += 1
            acc.latest_heartbeat = _later(acc.latest_heartbeat, (*order, row["interval_s"]))
        elif kind == "usage":
            acc.usage_records += 1
            for q in row["quantities"]:
                acc.usage.setdefault(quantity_key(q["name"], q["unit"]), []).append(q["value"])
        elif kind == "feature":
            acc.feature_uses += row["count"]
            acc.features[row["feature"]] = acc.features.get(row["feature"], 0) + row["count"]
        elif kind == "error" and row["severity"] in ERROR_SEVERITIES:
            acc.errors += 1
            acc.critical_errors += row["severity"] == "critical"
            acc.error_fw[row["fw"]] = acc.error_fw.get(row["fw"], 0) + 1
        return acc

    def merge_accumulators(self, accumulators: Any) -> HourAccumulator:
        merged = HourAccumulator()
        for acc in accumulators:
            merged.records += acc.records
            merged.heartbeats += acc.heartbeats
            merged.usage_records += acc.usage_records
            merged.feature_uses += acc.feature_uses
            merged.errors += acc.errors
            merged.critical_errors += acc.critical_errors
            for key, values in acc.usage.items():
                merged.usage.setdefault(key, []).extend(values)
            _add_counts(merged.features, acc.features)
            _add_counts(merged.error_fw, acc.error_fw)
            merged.latest = _later(merged.latest, acc.latest)
            merged.latest_heartbeat = _later(merged.latest_heartbeat, acc.latest_heartbeat)
            for boot, span in acc.seq_spans.items():
                merge_span(merged.seq_spans, boot, *span)
        return merged

    def extract_output(self, acc: HourAccumulator) -> HourAccumulator:
        return acc


def device_hour(key: tuple[str, str, str, str], hour_ms: int, acc: HourAccumulator) -> DeviceHour:
    """The DeviceHour of one (customer, site, gateway, device) key from its accumulator."""
    customer_id, site_id, gateway_id, device_id = key
    interval_s = acc.latest_heartbeat[3] if acc.latest_heartbeat else 0
    return DeviceHour(
        customer_id=customer_id,
        site_id=site_id,
        gateway_id=gateway_id,
        device_id=device_id,
        hour_ms=hour_ms,
        records=acc.records,
        heartbeats=acc.heartbeats,
        expected_heartbeats=HOUR_S / interval_s if interval_s else 0.0,
        usage_records=acc.usage_records,
        feature_uses=acc.feature_uses,
        errors=acc.errors,
        critical_errors=acc.critical_errors,
        usage={k: math.fsum(sorted(v)) for k, v in sorted(acc.usage.items())},
        features=dict(sorted(acc.features.items())),
        error_fw=dict(sorted(acc.error_fw.items())),
        fw=acc.latest[3] if acc.latest else "",
        last_ts_ms=acc.latest[0] if acc.latest else 0,
        seq_spans=dict(sorted(acc.seq_spans.items())),
    )


def _device_hour_key(row: dict[str, Any]) -> tuple[tuple[str, str, str, str, int], dict[str, Any]]:
    return (
        (row["customer_id"], row["site_id"], row["gateway_id"], row["device_id"], _floor(row["ts_ms"], HOUR_S)),
        row,
    )


class _EmitDeviceHourFn(beam.DoFn):
    def process(self, keyed: Any) -> Any:
        (customer_id, site_id, gateway_id, device_id, hour_ms), acc = keyed
        yield device_hour((customer_id, site_id, gateway_id, device_id), hour_ms, acc)


class _EventTimeRollup(beam.PTransform):
    """The window policy both rollups take: ``window_mode`` plus lateness and trigger."""

    def __init__(
        self,
        *,
        window_mode: str = "event_time",
        allowed_lateness_s: int = 0,
        trigger: TriggerFn | None = None,
        accumulation_mode: Any = None,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        if window_mode not in WINDOW_MODES:
            raise ValueError(f"window_mode {window_mode!r} is not one of {WINDOW_MODES}")
        self._mode = window_mode
        self._window = dict(
            allowed_lateness_s=allowed_lateness_s,
            trigger=trigger,
            accumulation_mode=accumulation_mode,
        )


class DeviceHourlyRollups(_EventTimeRollup):
    """Lake rows → one :class:`DeviceHour` per device per event-time hour.

    ``window_mode`` (see :data:`WINDOW_MODES`) and ``allowed_lateness_s`` /
    ``trigger`` / ``accumulation_mode`` are the window policy (see
    :class:`WindowByEventTime`); a batch job passes ``window_mode="batch"``.
    """

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        if self._mode == "event_time":
            rows = (
                rows
                | "EventTime" >> WithEventTime()
                | "Hourly" >> WindowByEventTime(HOUR_S, **self._window)
            )
        return (
            rows
            | "KeyByDeviceHour" >> beam.Map(_device_hour_key)
            | "Combine" >> beam.CombinePerKey(DeviceHourFn())
            | "ToDeviceHour" >> beam.ParDo(_EmitDeviceHourFn())
        )


# ------------------------------------------------------------------- daily


def _hour_size(hour: DeviceHour) -> tuple[Any, ...]:
    # Accumulating panes of one hour only grow; the largest is the latest.
    # The tail makes the choice total, so it never depends on arrival order.
    return (hour.records, hour.last_ts_ms, hour.heartbeats, hour.errors, repr(hour))


class CustomerDayFn(beam.CombineFn):
    """Combines one customer's DeviceHours of one day.

    The accumulator maps (device_id, hour_ms) to the largest DeviceHour seen
    for it, so restated panes of the same hour replace each other instead of
    adding up; the sums are taken in :func:`customer_day`.
    """

    def create_accumulator(self) -> dict[tuple[str, int], DeviceHour]:
        return {}

    def add_input(
        self, acc: dict[tuple[str, int], DeviceHour], hour: DeviceHour
    ) -> dict[tuple[str, int], DeviceHour]:
        key = (hour.device_id, hour.hour_ms)
        seen = acc.get(key)
        if seen is None or _hour_size(hour) > _hour_size(seen):
            acc[key] = hour
        return acc

    def merge_accumulators(self, accumulators: Any) -> dict[tuple[str, int], DeviceHour]:
        merged: dict[tuple[str, int], DeviceHour] = {}
        for acc in accumulators:
            for hour in acc.values():
                self.add_input(merged, hour)
        return merged

    def extract_output(
        self, acc: dict[tuple[str, int], DeviceHour]
    ) -> dict[tuple[str, int], DeviceHour]:
        return acc


def _sum_floats(dicts: list[dict[str, float]]) -> dict[str, float]:
    parts: dict[str, list[float]] = {}
    for d in dicts:
        for key, value in d.items():
            parts.setdefault(key, []).append(value)
    return {key: math.fsum(sorted(values)) for key, values in sorted(parts.items())}


def _sum_ints(dicts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in dicts:
        _add_counts(total, d)
    return dict(sorted(total.items()))


def customer_day(customer_id: str, day: str, hours: list[DeviceHour]) -> CustomerDay:
    """One customer's day from its DeviceHours (one per device and hour).

    Per device, the heartbeat interval is the one of its latest hour with
    heartbeats, and its promise for the day is 86400 / interval — a device
    that falls silent at noon has kept half of its promise. The customer's
    ``heartbeat_interval_s`` is the most common device interval (ties: the
    shortest). ``device_fw`` is each device's firmware at its latest record.
    """
    hours = sorted(hours, key=lambda h: (h.device_id, h.hour_ms))
    interval: dict[str, tuple[int, int]] = {}  # device -> (hour_ms, interval_s)
    latest_fw: dict[str, tuple[int, int, str]] = {}  # device -> (last_ts_ms, hour_ms, fw)
    for h in hours:
        if h.expected_heartbeats > 0:
            candidate = (h.hour_ms, round(HOUR_S / h.expected_heartbeats))
            interval[h.device_id] = max(interval.get(h.device_id, candidate), candidate)
        if h.fw:
            candidate_fw = (h.last_ts_ms, h.hour_ms, h.fw)
            latest_fw[h.device_id] = max(latest_fw.get(h.device_id, candidate_fw), candidate_fw)
    # Per device and boot, the day's span of sequence numbers: what the device says it sent.
    spans: dict[tuple[str, int], tuple[int, int, int]] = {}
    for h in hours:
        for boot, (low, high, count) in h.seq_spans.items():
            seen = spans.get((h.device_id, boot))
            spans[(h.device_id, boot)] = (low, high, count) if seen is None else (
                min(seen[0], low), max(seen[1], high), seen[2] + count)
    intervals = Counter(i for _, i in interval.values())
    common = min(intervals, key=lambda i: (-intervals[i], i)) if intervals else 0
    return CustomerDay(
        customer_id=customer_id,
        day=day,
        reporting_devices=tuple(sorted({h.device_id for h in hours if h.records})),
        active_devices=tuple(sorted({h.device_id for h in hours if h.usage_records})),
        gateways=tuple(sorted({h.gateway_id for h in hours})),
        heartbeats=sum(h.heartbeats for h in hours),
        expected_heartbeats=math.fsum(DAY_S / i for _, i in interval.values() if i > 0),
        heartbeat_interval_s=common,
        usage=_sum_floats([h.usage for h in hours]),
        features=_sum_ints([h.features for h in hours]),
        errors=sum(h.errors for h in hours),
        critical_errors=sum(h.critical_errors for h in hours),
        error_fw=_sum_ints([h.error_fw for h in hours]),
        device_fw={device: fw for device, (_, _, fw) in sorted(latest_fw.items())},
        records=sum(count for _, _, count in spans.values()),
        expected_records=sum(high - low + 1 for low, high, _ in spans.values()),
    )


class _EmitCustomerDayFn(beam.DoFn):
    def process(self, keyed: Any) -> Any:
        (customer_id, day), acc = keyed
        yield customer_day(customer_id, day, list(acc.values()))


class CustomerDailyUsage(_EventTimeRollup):
    """DeviceHour → one :class:`CustomerDay` per customer per UTC day (event time).

    Takes the same window-policy parameters as :class:`DeviceHourlyRollups`.
    """

    def expand(self, hours: beam.PCollection) -> beam.PCollection:
        if self._mode == "event_time":
            hours = (
                hours
                # An hour window lies inside one day window, so moving the
                # timestamp back to the hour's start never makes it late.
                | "EventTime" >> beam.Map(_stamp_hour)
                | "Daily" >> WindowByEventTime(DAY_S, **self._window)
            )
        return (
            hours
            | "KeyByCustomerDay" >> beam.Map(lambda hour: ((hour.customer_id, utc_day(hour.hour_ms)), hour))
            | "Combine" >> beam.CombinePerKey(CustomerDayFn())
            | "ToCustomerDay" >> beam.ParDo(_EmitCustomerDayFn())
        )
