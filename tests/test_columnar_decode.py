"""ArrowDecoder against LandingDecoder: the same lake rows, dead letters, reasons and details.

The per-element decoder is the reference; every test decodes the same landing
messages both ways and compares. Literal messages cover each rule of the
contract and each way out of the fast tiers (Arrow's JSON reader, the column
checks); a Hypothesis test mixes valid and broken records at random.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # not collected
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpulse.pipeline.lake.landing import LANDING_SCHEMA
from fleetpulse.pipeline.transforms import DEAD_LETTERS, DecodeBatches
from fleetpulse.pipeline.transforms import decode as decode_module
from fleetpulse.pipeline.transforms.arrow_decode import ArrowDecoder, Decoded, _EnvelopeOnly
from fleetpulse.pipeline.transforms.columnar import DecodeBatchTables
from fleetpulse.pipeline.transforms.decode import LandingDecoder, dead_letter_row
from fleetpulse.schemas import load_contract
from fleetpulse.schemas import validate as validate_module

T0 = 1_709_510_400_000  # 2024-03-04T00:00:00Z
RECEIVED = T0 + 600_000
CONTRACT = load_contract(1)

HEARTBEAT = {"device_id": "d1", "ts_ms": T0 + 1000, "boot": 1, "seq": 0, "kind": "heartbeat",
             "fw": "2.4.1", "interval_s": 60, "uptime_s": 5}
USAGE = {"device_id": "d1", "ts_ms": T0 + 2000, "boot": 1, "seq": 1, "kind": "usage", "fw": "2.4.1",
         "period_s": 60, "quantities": [{"name": "runtime", "value": 42, "unit": "s", "extra": 1},
                                        {"name": "energy", "value": 0.25, "unit": "kWh"}],
         "from_a_newer_minor": "ignored"}
FEATURE = {"device_id": "d2", "ts_ms": T0 + 3000, "boot": 2, "seq": 5, "kind": "feature", "fw": "1.0",
           "feature": "scan", "count": 3}
ERROR = {"device_id": "d2", "ts_ms": T0 + 4000, "boot": 2, "seq": 6, "kind": "error", "fw": "1.0",
         "code": "E1", "severity": "critical", "message": "boom"}
VALID = [HEARTBEAT, USAGE, FEATURE, ERROR]

# Records the Validator refuses (or accepts although a fast tier cannot tell), one rule each.
TRICKY: list[Any] = [
    {**HEARTBEAT, "v": 1}, {**HEARTBEAT, "v": 1.0}, {**HEARTBEAT, "v": True}, {**HEARTBEAT, "v": 2},
    {**HEARTBEAT, "v": None}, {**HEARTBEAT, "uptime_s": None},
    {k: v for k, v in HEARTBEAT.items() if k != "uptime_s"}, {k: v for k, v in HEARTBEAT.items() if k != "seq"},
    {**HEARTBEAT, "seq": 1.0}, {**HEARTBEAT, "seq": True}, {**HEARTBEAT, "seq": -1}, {**HEARTBEAT, "seq": 2**60},
    {**HEARTBEAT, "seq": 2**70}, {**HEARTBEAT, "boot": 2**33}, {**HEARTBEAT, "ts_ms": RECEIVED + 10**9},
    {**HEARTBEAT, "ts_ms": 5}, {**HEARTBEAT, "device_id": "bad id"}, {**HEARTBEAT, "device_id": "x" * 65},
    {**HEARTBEAT, "device_id": 7}, {**HEARTBEAT, "fw": "v2"}, {**HEARTBEAT, "fw": "2.4.1\n"},
    {**HEARTBEAT, "kind": "telepathy"}, {**HEARTBEAT, "kind": None}, {**HEARTBEAT, "interval_s": 0},
    {**HEARTBEAT, "interval_s": "60"}, {**HEARTBEAT, "count": "not mine", "quantities": 5},
    {**ERROR, "message": "x" * 300}, {**ERROR, "message": None}, {**ERROR, "message": "caf\u00e9"},
    {**ERROR, "severity": "meh"}, {**USAGE, "quantities": []},
    {**USAGE, "quantities": [{"name": "a", "value": True, "unit": "s"}]},
    {**USAGE, "quantities": [{"name": "a", "value": -1, "unit": "s"}]},
    {**USAGE, "quantities": [{"name": "a", "value": float("nan"), "unit": "s"}]},
    {**USAGE, "quantities": [{"name": "a", "value": 1, "unit": "furlong"}]},
    {**USAGE, "quantities": [{"name": "a b", "value": 1, "unit": "s"}]},
    {**USAGE, "quantities": [{"value": 1, "unit": "s"}]}, {**USAGE, "quantities": [5]},
    {**USAGE, "quantities": [{"name": "a", "value": 1, "unit": "s"}] * 17},
    {**USAGE, "quantities": [{"name": "a", "value": 2**60 + 1, "unit": "s"}]}, {**USAGE, "quantities": None},
    {**USAGE, "quantities": [{"name": "a", "value": -0.0, "unit": "s"}]},
    {**FEATURE, "feature": "ok.feature:x-1"}, {**FEATURE, "count": 0},
    "not an object", 5, None, [HEARTBEAT],
]


def topic(customer: str = "c1") -> str:
    return CONTRACT.topic("gateway_batches", customer_id=customer, site_id="s1", gateway_id="g1")


def batch(records: list[Any], customer: str = "c1", **extra: Any) -> bytes:
    envelope = {"v": 1, "customer_id": customer, "site_id": "s1", "gateway_id": "g1",
                "batch_seq": 7, "sent_ms": RECEIVED, "records": records, **extra}
    return json.dumps(envelope).encode()


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def both(messages: list[tuple[Any, Any, Any]]) -> tuple[Decoded, list[str], list[str], list[str], list[str]]:
    """Decode ``messages`` both ways: (columnar result, rows a, rows b, dead letters a, dead letters b)."""
    reference = LandingDecoder()
    rows: list[dict[str, Any]] = []
    dead: list[Any] = []
    for t, p, r in messages:
        got, refused = reference.decode({"topic": t, "payload": p, "received_ms": r})
        rows += got
        dead += refused
    decoded = ArrowDecoder().decode(*(list(column) for column in zip(*messages, strict=True)))
    return (
        decoded,
        sorted(map(canonical, rows)),
        sorted(map(canonical, decoded.table.to_pylist())),
        sorted(canonical(dead_letter_row(d)) for d in dead),
        sorted(canonical(dead_letter_row(d)) for d in decoded.dead),
    )


def test_clean_batches_take_arrows_json_reader_and_match_the_validator() -> None:
    messages = [(topic(), batch(VALID), RECEIVED), (topic(), batch([HEARTBEAT, FEATURE]), RECEIVED + 1),
                (topic(), batch([]), RECEIVED + 2)]
    decoded, rows_a, rows_b, dead_a, dead_b = both(messages)
    assert decoded.plain_messages == 3 and decoded.exact_records == 0
    assert rows_b == rows_a and len(rows_a) == 6
    assert dead_b == dead_a == []
    assert decoded.table.schema.equals(ArrowDecoder().schema, check_metadata=True)


def test_every_rule_gives_the_validators_reason_and_detail() -> None:
    messages = [(topic(), batch([*VALID, record]), RECEIVED + i) for i, record in enumerate(TRICKY)]
    messages += [
        (topic(), batch(TRICKY), RECEIVED),
        (topic(), b"{not json", RECEIVED),
        (topic(), b"\xff\xfe", RECEIVED),
        (topic(), b"", RECEIVED),
        (topic(), batch(VALID) + b" " + batch(VALID), RECEIVED),  # two objects in one message
        (topic(), b"\xef\xbb\xbf" + batch(VALID), RECEIVED),  # a BOM
        (topic(), json.dumps(json.loads(batch(VALID)), indent=2).encode(), RECEIVED),  # newlines
        (topic(), batch(VALID).replace(b'"device_id"', b'"device\\u005fid"', 1), RECEIVED),  # escapes
        (topic(), batch(VALID, customer="c2"), RECEIVED),  # topic of another customer
        (topic(), batch(VALID, v=2), RECEIVED),
        (topic(), batch(VALID, batch_seq=-1), RECEIVED),
        (topic(), batch([HEARTBEAT] * 5001), RECEIVED),
        (topic(), batch(VALID).replace(b"\"records\": [", b"\"records\": \"none\", \"x\": ["), RECEIVED),
        ("fleetpulse/v1/somewhere/else", batch(VALID), RECEIVED),
        (None, batch(VALID), RECEIVED),
        (topic(), None, RECEIVED),
        (topic(), batch(VALID), "yesterday"),
    ]
    decoded, rows_a, rows_b, dead_a, dead_b = both(messages)
    assert rows_b == rows_a
    assert dead_b == dead_a
    assert len({json.loads(d)["reason"] for d in dead_a}) >= 12  # the cases above really are refused
    assert decoded.plain_messages > 0 and decoded.exact_records > 0 and decoded.exact_messages > 0


def test_gzip_batches_decode_as_the_validator_decodes_them() -> None:
    payloads = [gzip.compress(batch(VALID)), gzip.compress(batch(VALID))[:-3], gzip.compress(batch(TRICKY))]
    decoded, rows_a, rows_b, dead_a, dead_b = both([(topic(), p, RECEIVED) for p in payloads])
    assert rows_b == rows_a and dead_b == dead_a
    if hasattr(validate_module, "GZIP_MAGIC"):  # the Validator inflates gzip batches
        assert len(rows_a) > len(VALID) and decoded.plain_messages == 1


def test_values_the_lake_cannot_store_are_dead_letters_not_crashes() -> None:
    records = [HEARTBEAT, {**HEARTBEAT, "seq": 1, "uptime_s": 2**70}, {**ERROR, "message": "\ud800"},
               {**FEATURE, "count": 2**64}]
    decoded = ArrowDecoder().decode([topic()], [batch(records)], [RECEIVED])
    assert decoded.table.num_rows == 1
    assert sorted((d[0].reason, d[0].index) for d in decoded.dead) == [
        ("not_utf8", 2), ("out_of_range", 1), ("out_of_range", 3)]
    letter = dead_letter_row(decoded.dead[0])
    assert letter["topic"] == topic() and letter["record"]["device_id"] in {"d1", "d2"}


def test_envelope_only_hands_back_the_records_unvalidated() -> None:
    header, items, rejections = _EnvelopeOnly(CONTRACT).envelope(batch([5, HEARTBEAT]), now_ms=RECEIVED)
    assert header is not None and header["customer_id"] == "c1"
    assert items == [5, HEARTBEAT] and rejections == []


RECORD_VALUES = st.one_of(st.integers(-2, 2**64), st.floats(allow_nan=True), st.text(max_size=4),
                          st.booleans(), st.none(), st.sampled_from(["heartbeat", "usage", "s", "d1", "2.4.1"]))


@st.composite
def records(draw: st.DrawFn) -> Any:
    base = dict(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from([*base, "v", "count", "interval_s", "quantities", "message"]))
        if draw(st.booleans()):
            base.pop(key, None)
        else:
            base[key] = draw(RECORD_VALUES)
    base["seq"] = draw(st.integers(0, 50)) if draw(st.booleans()) else base.get("seq")
    return base


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(records(), max_size=6), min_size=1, max_size=4))
def test_random_records_decode_the_same_both_ways(messages: list[list[Any]]) -> None:
    landing = [(topic(), batch(recs), RECEIVED + i) for i, recs in enumerate(messages)]
    _, rows_a, rows_b, dead_a, dead_b = both(landing)
    # Values the lake cannot store are the one deliberate difference (see arrow_decode).
    unstorable = [d for d in dead_b if json.loads(d)["detail"].endswith(("int64", "store it"))]
    assert rows_b == [r for r in rows_a if not any(_same_record(r, d) for d in unstorable)]
    assert sorted(set(dead_b) - set(unstorable)) == dead_a


def _same_record(row: str, dead: str) -> bool:
    record = json.loads(dead)["record"]
    values = json.loads(row)
    return all(values.get(k) == v for k, v in record.items())


def counters(result: Any) -> dict[str, int]:
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(decode_module.METRICS_NAMESPACE))["counters"]:
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + counter.committed
    return totals


def test_decode_batch_tables_counts_and_routes_like_decode_batches() -> None:
    messages = [(topic(), batch([*VALID, TRICKY[3], TRICKY[17]]), RECEIVED), (topic(), b"{nope", RECEIVED),
                (topic(), batch(VALID, customer="c2"), RECEIVED)]
    table = pa.Table.from_pylist(
        [{"topic": t, "payload": p, "received_ms": r} for t, p, r in messages], schema=LANDING_SCHEMA
    )
    results = {}
    for name, build in {
        "rows": lambda p: p | beam.Create([{"topic": t, "payload": q, "received_ms": r} for t, q, r in messages])
        | DecodeBatches(),
        "tables": lambda p: p | beam.Create([table.slice(0, 2), table.slice(2)])
        | DecodeBatchTables(chunk_messages=1),
    }.items():
        pipeline = BeamTestPipeline()
        decoded = build(pipeline)
        main = decoded.main if name == "rows" else decoded.main | beam.FlatMap(lambda t: t.to_pylist())
        assert_that(main | beam.Map(canonical), equal_to([canonical(r) for r in _reference_rows(messages)]),
                    label="rows")
        assert_that(decoded[DEAD_LETTERS] | beam.Map(lambda d: d["reason"]),
                    equal_to(["unsupported_version", "bad_identifier", "not_json", "topic_mismatch"]),
                    label="reasons")
        result = pipeline.run()
        result.wait_until_finish()
        results[name] = counters(result)
    assert results["tables"] == results["rows"] == {
        "received": 3, "sent": 4, "dropped": 4, "dropped_unsupported_version": 1,
        "dropped_bad_identifier": 1, "dropped_not_json": 1, "dropped_topic_mismatch": 1,
    }


def _reference_rows(messages: list[tuple[Any, Any, Any]]) -> list[dict[str, Any]]:
    reference = LandingDecoder()
    return [row for t, p, r in messages for row in reference.decode({"topic": t, "payload": p, "received_ms": r})[0]]
