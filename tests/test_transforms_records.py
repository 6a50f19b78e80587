"""DecodeBatches and DedupeRecords on tiny literal gateway batches (DirectRunner)."""

from __future__ import annotations

import json
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # not collected
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpulse.pipeline.transforms import (
    DEAD_LETTERS,
    DecodeBatches,
    DedupeRecords,
    WithEventTime,
    lake_columns,
)
from fleetpulse.pipeline.transforms import decode as decode_module
from fleetpulse.pipeline.transforms import dedupe as dedupe_module
from fleetpulse.schemas import REASONS, load_contract

T0 = 1_709_510_400_000  # 2024-03-04T00:00:00Z
RECEIVED = T0 + 600_000
CONTRACT = load_contract(1)


def topic(customer: str = "c1", site: str = "s1", gateway: str = "g1") -> str:
    return CONTRACT.topic("gateway_batches", customer_id=customer, site_id=site, gateway_id=gateway)


def batch(records: list[Any], customer: str = "c1", site: str = "s1", gateway: str = "g1") -> bytes:
    return json.dumps(
        {
            "v": 1,
            "customer_id": customer,
            "site_id": site,
            "gateway_id": gateway,
            "batch_seq": 7,
            "sent_ms": RECEIVED - 1000,
            "records": records,
        }
    ).encode()


def landing(payload: Any, on: str | None = None, received_ms: Any = RECEIVED) -> dict[str, Any]:
    return {"topic": topic() if on is None else on, "payload": payload, "received_ms": received_ms}


HEARTBEAT = {"device_id": "d1", "ts_ms": T0 + 1000, "boot": 1, "seq": 0, "kind": "heartbeat",
             "fw": "2.4.1", "interval_s": 60, "uptime_s": 5}
USAGE = {"device_id": "d1", "ts_ms": T0 + 2000, "boot": 1, "seq": 1, "kind": "usage", "fw": "2.4.1",
         "period_s": 60, "quantities": [{"name": "runtime", "value": 42, "unit": "s"}],
         "from_a_newer_minor": "ignored"}
NO_SEQ = {"device_id": "d1", "ts_ms": T0 + 3000, "boot": 1, "kind": "heartbeat", "fw": "2.4.1",
          "interval_s": 60}
FUTURE = {**HEARTBEAT, "seq": 9, "ts_ms": RECEIVED + 3_600_000}


def lake(**values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(lake_columns())
    row.update(customer_id="c1", site_id="s1", gateway_id="g1", received_ms=RECEIVED)
    row.update(values)
    return row


def counters(result: Any, namespace: str) -> dict[str, int]:
    """Committed counter values of ``namespace``, summed over the steps that report them."""
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + counter.committed
    return totals


def test_lake_columns_come_from_the_contract_in_order() -> None:
    assert lake_columns() == (
        "customer_id", "site_id", "gateway_id",
        "device_id", "ts_ms", "boot", "seq", "kind", "fw",
        "interval_s", "uptime_s", "period_s", "quantities", "feature", "count",
        "code", "severity", "message",
        "received_ms",
    )


def test_decode_routes_each_rejection_to_dead_letters_and_keeps_valid_rows() -> None:
    inputs = [
        landing(batch([HEARTBEAT, USAGE, NO_SEQ, FUTURE])),
        landing(b"{not json"),
        landing(b"\xff\xfe"),
        landing(batch([HEARTBEAT], customer="c2")),  # published under c1's topic
        landing(batch([HEARTBEAT]), on="fleetpulse/v1/somewhere/else"),
        landing(None),
    ]
    pipeline = BeamTestPipeline()
    decoded = pipeline | beam.Create(inputs) | DecodeBatches()
    assert_that(
        decoded.main,
        equal_to([
            lake(device_id="d1", ts_ms=T0 + 1000, boot=1, seq=0, kind="heartbeat", fw="2.4.1",
                 interval_s=60, uptime_s=5),
            lake(device_id="d1", ts_ms=T0 + 2000, boot=1, seq=1, kind="usage", fw="2.4.1",
                 period_s=60, quantities=[{"name": "runtime", "value": 42.0, "unit": "s"}]),
        ]),
        label="valid rows",
    )
    assert_that(
        decoded[DEAD_LETTERS] | beam.Map(lambda d: (d["reason"], d["index"], d["payload_encoding"])),
        equal_to([
            ("missing_field", 2, None),
            ("event_time_in_future", 3, None),
            ("not_json", None, "utf-8"),
            ("not_utf8", None, "base64"),
            ("topic_mismatch", None, "utf-8"),
            ("topic_mismatch", None, "utf-8"),
            ("wrong_type", None, None),
        ]),
        label="reasons",
    )
    assert_that(
        decoded[DEAD_LETTERS] | beam.Filter(lambda d: d["reason"] == "missing_field"),
        equal_to([{
            "at_ms": RECEIVED, "source": "pipeline", "topic": topic(), "reason": "missing_field",
            "detail": "record has no seq", "index": 2, "record": NO_SEQ,
            "payload": None, "payload_encoding": None, "payload_bytes": None, "truncated": False,
        }]),
        label="dead letter row",
    )
    result = pipeline.run()
    result.wait_until_finish()
    assert counters(result, decode_module.METRICS_NAMESPACE) == {
        "received": 6,
        "sent": 2,
        "dropped": 7,
        "dropped_missing_field": 1,
        "dropped_event_time_in_future": 1,
        "dropped_not_json": 1,
        "dropped_not_utf8": 1,
        "dropped_topic_mismatch": 2,
        "dropped_wrong_type": 1,
    }


def test_dedupe_keeps_one_row_per_device_boot_seq_deterministically() -> None:
    first = lake(device_id="d1", ts_ms=T0 + 1000, boot=1, seq=0, kind="heartbeat", fw="2.4.1",
                 interval_s=60)
    copies = [{**first, "received_ms": r} for r in (RECEIVED + 5, RECEIVED, RECEIVED + 9)]
    # Same received_ms, different content: the smaller canonical JSON wins.
    twin_a = {**first, "seq": 1, "uptime_s": 8}
    twin_b = {**first, "seq": 1, "uptime_s": 7}
    other_boot = {**first, "boot": 2}  # seq restarts after a reboot: not a duplicate
    pipeline = BeamTestPipeline()
    rows = pipeline | beam.Create([*copies, twin_a, twin_b, other_boot])
    assert_that(
        rows | "Global" >> DedupeRecords(),
        equal_to([{**first, "received_ms": RECEIVED}, twin_b, other_boot]),
        label="global window",
    )
    # Streaming shape: event time, hourly windows. Copies share ts_ms and meet in
    # one window; the survivor keeps its event time as element timestamp.
    late_copy = {**first, "received_ms": RECEIVED + 3_600_000}
    windowed = (
        pipeline
        | "Windowed rows" >> beam.Create([first, late_copy, {**first, "seq": 5, "ts_ms": T0 + 7_200_000}])
        | WithEventTime()
        | beam.WindowInto(FixedWindows(3600))
        | "Windowed" >> DedupeRecords()
    )

    class Stamp(beam.DoFn):
        def process(self, row: Any, ts: Any = beam.DoFn.TimestampParam) -> Any:
            yield (row["seq"], row["received_ms"], ts.micros // 1000)

    assert_that(
        windowed | beam.ParDo(Stamp()),
        equal_to([(0, RECEIVED, T0 + 1000), (5, RECEIVED, T0 + 7_200_000)]),
        label="event-time windows",
    )
    result = pipeline.run()
    result.wait_until_finish()
    assert counters(result, dedupe_module.METRICS_NAMESPACE) == {
        "received": 9,
        "sent": 5,
        "duplicates": 4,
    }


# Valid records of each kind, and single-field breakages of them: most
# records are valid, the rest fail on one field.
_VALID = [
    HEARTBEAT,
    USAGE,
    {**HEARTBEAT, "kind": "feature", "feature": "scan", "count": 2},
    {**HEARTBEAT, "kind": "error", "code": "E1", "severity": "critical", "message": "jam"},
]
_BREAKAGES = [
    ("device_id", ""), ("device_id", 7), ("ts_ms", 5), ("ts_ms", RECEIVED + 10**9),
    ("ts_ms", "now"), ("boot", -1), ("seq", True), ("kind", "reboot"), ("fw", "x"),
    ("interval_s", 0), ("quantities", []), ("severity", "fatal"), ("v", 2), ("seq", None),
]


@st.composite
def _record(draw: Any) -> Any:
    record = dict(draw(st.sampled_from(_VALID)))
    record["seq"] = draw(st.integers(min_value=0, max_value=10**6))
    if draw(st.booleans()):
        name, value = draw(st.sampled_from(_BREAKAGES))
        if value is None:
            del record[name]
        else:
            record[name] = value
    return record


@settings(max_examples=150, deadline=None)
@given(
    records=st.lists(st.one_of(_record(), st.integers(), st.none()), max_size=6),
    envelope_extra=st.dictionaries(st.sampled_from(["v", "batch_seq", "customer_id"]),
                                   st.one_of(st.integers(), st.text(max_size=3)), max_size=2),
    garbage=st.one_of(st.none(), st.binary(max_size=40)),
)
def test_decode_never_raises_and_accounts_for_every_record(
    records: list[Any], envelope_extra: dict[str, Any], garbage: bytes | None
) -> None:
    fn = decode_module._DecodeBatchFn(None)
    fn.setup()
    payload = batch(records) if garbage is None else garbage
    if envelope_extra and garbage is None:
        payload = json.dumps({**json.loads(payload), **envelope_extra}).encode()
    outputs = list(fn.process(landing(payload)))
    rows = [o for o in outputs if not isinstance(o, pvalue.TaggedOutput)]
    dead = [o.value for o in outputs if isinstance(o, pvalue.TaggedOutput)]
    assert all(o.tag == DEAD_LETTERS for o in outputs if isinstance(o, pvalue.TaggedOutput))
    assert all(d["reason"] in REASONS for d in dead)
    assert all(tuple(row) == lake_columns() for row in rows)
    if any(d["index"] is None for d in dead):  # the whole message was refused
        assert rows == [] and len(dead) == 1
    else:  # every record is either a row or a dead letter, never both, never neither
        assert len(rows) + len(dead) == len(records)
        assert sorted(d["index"] for d in dead) == sorted(set(d["index"] for d in dead))
