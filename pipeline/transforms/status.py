"""DecodeGatewayStatus: the gateways' status messages → one row per gateway and minute.

Each collector publishes a retained status to
``fleetpulse/v1/customers/{c}/sites/{s}/gateways/{g}/status`` (its cumulative
counters and ``state``), and the central broker publishes its Last Will
(``state: offline``) when it disappears; the lander keeps them in the lake's
``status`` zone. This step validates them (a malformed one becomes a dead
letter with its reason, like a bad batch) and keeps the latest status of each
gateway per minute of arrival, so writing them to InfluxDB is idempotent.

Row: ``customer_id, site_id, gateway_id, minute_ms, received_ms, state`` and
the counters :data:`COUNTER_FIELDS` — ``received_records, sent_records,
sent_batches, dead_letters, dead_letters_dropped`` (dead-letter rows the
gateway lost to its quota or a failing disk), ``spool_quarantined_files``
(files the spool moved aside), ``errors, reconnects`` and ``dropped_records``
(all reasons summed) — ``None`` when the message carried none (the Last Will
has no counters; an older collector lacks the newer ones).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cache
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from fleetpulse.errors import quote
from fleetpulse.pipeline.lake.landing import zone_of
from fleetpulse.schemas import Rejection, dead_letter, load_contract
from fleetpulse.schemas.status import COUNTERS, STATES

from .rollups import WindowByEventTime, _EventTimeRollup

DEAD_LETTERS = "dead_letters"
METRICS_NAMESPACE = "fleetpulse.pipeline.status"
IDS = ("customer_id", "site_id", "gateway_id")
#: Every counter column of a row (and of fp_gateway_status): the collector's plain counts
#: (``COUNTERS``, the status message's vocabulary in fleetpulse.schemas.status) and
#: dropped_records (its reasons summed).
COUNTER_FIELDS = (*COUNTERS, "dropped_records")
MINUTE_MS = 60_000


class InvalidStatus(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@cache
def _status_topic_re() -> re.Pattern[str]:
    """The contract's status topic with its identifiers as named groups."""
    regex = re.escape(load_contract().topics["gateway_status"]["pattern"])
    for name in IDS:
        regex = regex.replace(re.escape("{" + name + "}"), f"(?P<{name}>[^/]+)")
    return re.compile(regex)


def _topic_ids(topic: str) -> dict[str, str] | None:
    match = _status_topic_re().fullmatch(topic)
    return match.groupdict() if match else None


def parse_status(topic: str, payload: bytes, received_ms: int) -> dict[str, Any]:
    """One status message → its row; raises InvalidStatus with a reason from the contract's set."""
    try:
        status = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        # ValueError: not UTF-8, not JSON, or an int past Python's digit limit; RecursionError: nested too deeply.
        raise InvalidStatus("not_json", f"status is not JSON: {exc}") from None
    if not isinstance(status, dict):
        raise InvalidStatus("not_object", f"status must be an object, got {quote(status)}")
    identifier = load_contract().identifier_re
    row: dict[str, Any] = {}
    for key in IDS:
        value = status.get(key)
        if value is None:
            raise InvalidStatus("missing_field", f"status has no {key}")
        if not isinstance(value, str) or not identifier.fullmatch(value):
            raise InvalidStatus("bad_identifier", f"{key}={quote(value)} is not an identifier")
        row[key] = value
    ids = _topic_ids(topic)
    if ids is None or ids != {k: row[k] for k in IDS}:
        raise InvalidStatus("topic_mismatch", f"topic {quote(topic)} does not name {row['gateway_id']}")
    state = status.get("state")
    if state not in STATES:
        raise InvalidStatus("bad_enum", f"state={quote(state)} is not one of {list(STATES)}")
    counters = status.get("counters", {})
    if not isinstance(counters, dict):
        raise InvalidStatus("wrong_type", f"counters must be an object, got {quote(counters)}")
    for key in COUNTERS:
        value = counters.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise InvalidStatus("wrong_type", f"counters.{key}={quote(value)} is not a count")
        row[key] = value
    dropped = counters.get("dropped_records")
    if dropped is None:
        row["dropped_records"] = None
    elif isinstance(dropped, dict) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in dropped.values()
    ):
        row["dropped_records"] = sum(dropped.values())
    else:
        raise InvalidStatus("wrong_type", f"counters.dropped_records={quote(dropped)} is not counts by reason")
    row.update(state=state, received_ms=received_ms, minute_ms=received_ms - received_ms % MINUTE_MS)
    return row


class _ParseStatusFn(beam.DoFn):
    def __init__(self) -> None:
        self.received = Metrics.counter(METRICS_NAMESPACE, "received")
        self.dropped = Metrics.counter(METRICS_NAMESPACE, "dropped")

    def process(self, landing: dict[str, Any]) -> Any:
        self.received.inc()
        try:
            yield parse_status(landing["topic"], landing["payload"], landing["received_ms"])
        except InvalidStatus as exc:
            self.dropped.inc()
            Metrics.counter(METRICS_NAMESPACE, f"dropped_{exc.reason}").inc()
            yield pvalue.TaggedOutput(DEAD_LETTERS, dead_letter(
                Rejection(exc.reason, exc.detail), source="pipeline:status", topic=landing["topic"],
                at_ms=landing["received_ms"], payload=landing["payload"],
            ))


def _latest(rows: Any) -> dict[str, Any]:
    # The last status received in the minute; ties (same ms) broken by content, so replays agree.
    return max(rows, key=lambda r: (r["received_ms"], json.dumps(r, sort_keys=True)))


class _AtReceived(beam.DoFn):
    """Stamps a status row with the time it was received: a status has no device event time."""

    def process(self, row: dict[str, Any]) -> Any:
        yield TimestampedValue(row, row["received_ms"] / 1000)


class DecodeGatewayStatus(_EventTimeRollup):
    """Status-zone landing rows → ``main`` rows (latest per gateway and minute) and ``dead_letters``.

    Takes the rollups' window policy (``window_mode``, ``allowed_lateness_s``,
    ``trigger``): in batch one group per gateway-minute; in streaming each row
    is stamped at its arrival and the minute is an event-time window, so a
    minute's latest status leaves as soon as the watermark passes it.
    """

    def expand(self, landing: beam.PCollection) -> dict[str, beam.PCollection]:
        parsed = landing | "Parse" >> beam.ParDo(_ParseStatusFn()).with_outputs(DEAD_LETTERS, main="main")
        rows = parsed.main
        if self._mode == "event_time":
            rows = (
                rows
                | "AtReceived" >> beam.ParDo(_AtReceived())
                | "ByMinute" >> WindowByEventTime(MINUTE_MS // 1000, **self._window)
            )
        latest = (
            rows
            | "KeyByGatewayMinute" >> beam.Map(lambda r: ((r["gateway_id"], r["minute_ms"]), r))
            | "LatestPerMinute" >> beam.CombinePerKey(_latest)
            | "Values" >> beam.Values()
        )
        return {"main": latest, DEAD_LETTERS: parsed[DEAD_LETTERS]}


def _utc_day(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).date().isoformat()


class _StatusOrBatch(beam.PartitionFn):
    def partition_for(self, element: Any, num_partitions: int, *args: Any, **kwargs: Any) -> int:
        return 1 if zone_of(element["topic"]) == "status" else 0


class SplitStatus(beam.PTransform):
    """Landing rows of every topic → ``(batches, status)``: the gateways' status messages apart.

    The streaming source reads both topic families in one session; the batch
    job reads them from their own zones. Anything that is not a status goes
    with the batches, where the decoder dead-letters what is not a batch either.
    """

    def expand(self, messages: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        parts = messages | "ByZone" >> beam.Partition(_StatusOrBatch(), 2)
        return parts[0], parts[1]


class OfflineReports(beam.PTransform):
    """Gateway status rows (:class:`DecodeGatewayStatus` ``main``) → ``(customer_id, (day, gateway_id))``
    for every status that said offline; the day is the UTC day it was received.

    The scoring join (:class:`~.scoring.ScoreAccounts`) groups them with the
    customer's days and marks each day's offline gateways (:func:`mark_offline`):
    a gateway that reported itself offline makes its customer's day low coverage.
    """

    def expand(self, status: beam.PCollection) -> beam.PCollection:
        return (
            status
            | "OnlyOffline" >> beam.Filter(lambda r: r["state"] == "offline")
            | "KeyByCustomer" >> beam.Map(
                lambda r: (r["customer_id"], (_utc_day(r["received_ms"]), r["gateway_id"])))
        )


def mark_offline(days: Iterable[Any], reports: Iterable[tuple[str, str]]) -> list[Any]:
    """A customer's CustomerDays with ``offline_gateways`` set from its ``(day, gateway_id)`` reports.

    Only existing days are marked: a day without any telemetry is low coverage anyway.
    """
    by_day: dict[str, set[str]] = {}
    for day, gateway in reports:
        by_day.setdefault(day, set()).add(gateway)
    return [
        dataclasses.replace(day, offline_gateways=tuple(sorted(by_day[day.day]))) if day.day in by_day else day
        for day in days
    ]
