"""The per-element and the columnar path agree on any set of landed batches, end to end.

Per element: every landing message through :class:`LandingDecoder` (the step
of ``DecodeBatches``), the rows folded by ``PickSurvivorFn`` (``DedupeRecords``)
and ``DeviceHourFn`` (``DeviceHourlyRollups``). Columnar: the messages in
chunks through :class:`ArrowDecoder` (the step of ``DecodeBatchTables``), the
tables split into groups (event hour × device shard) and each deduplicated and rolled up
(``DedupeRecordTables`` → ``DeviceHourTables``). Both are folded here without a
runner, like ``tests/test_columnar_rollups.py`` (whose reference this reuses).

Hypothesis draws the batches: several gateways, devices, boots and hours;
records resent in later batches and whole batches delivered again (some in
the same millisecond, so the canonical JSON decides the survivor); the same
(device, boot, seq) with other contents; broken records and broken messages.
The valid records, the dead letters (reason and detail), the survivors, the
duplicates removed and the device-hour rollups must be equal.
"""

from __future__ import annotations

import gzip
import json
import os
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetpulse.pipeline.model import DeviceHour
from fleetpulse.pipeline.transforms.arrow_decode import ArrowDecoder
from fleetpulse.pipeline.transforms.columnar import (
    dedupe_table,
    device_hour_table,
    device_hours_from_table,
    group_keys,
    split_table,
)
from fleetpulse.pipeline.transforms.decode import LandingDecoder, dead_letter_row
from fleetpulse.schemas import load_contract

from .test_columnar_rollups import reference

CONTRACT = load_contract()
T0 = 1_709_510_400_000  # 2024-03-04T00:00:00Z
H = 3_600_000
RECEIVED = T0 + 3 * H
GATEWAYS = [("c1", "s1", "g1"), ("c1", "s1", "g2"), ("c2", "s9", "g7")]
DEVICES = ["d1", "d2", "d3.x:7"]
UNITS = {"runtime": "s", "energy": "kWh", "pages": "pages"}
#: Broken values for a field: each breaks some rule of the contract (or none, for some fields).
BAD: st.SearchStrategy[Any] = st.sampled_from([
    None, True, -1, 0, 1.5, "", "x y", "1", [], {}, 2**63, 10**30, "z" * 300, "caf\u00e9", "a\ud800",
    T0 + 10 * H, 5, "telepathy", "fatal", "furlong", float("nan"),
])

#: Examples per run: a few seconds in CI; more by hand (PATHS_AGREE_EXAMPLES=2000 pytest ...).
EXAMPLES = int(os.environ.get("PATHS_AGREE_EXAMPLES", "60"))
# One decoder of each kind, reused: decoding keeps no state between calls.
LANDING = LandingDecoder()
ARROW = ArrowDecoder()


@st.composite
def valid_records(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["heartbeat", "usage", "feature", "error"]))
    record: dict[str, Any] = {
        "device_id": draw(st.sampled_from(DEVICES)),
        "ts_ms": T0 + draw(st.integers(0, 3 * H - 1)),
        "boot": draw(st.integers(1, 2)),
        "seq": draw(st.integers(0, 6)),  # few: copies and reused keys are common
        "kind": kind,
        "fw": draw(st.sampled_from(["2.4.1", "2.5.0", "1.0"])),
    }
    if draw(st.integers(0, 4)) == 0:
        record["v"] = 1
    if kind == "heartbeat":
        record["interval_s"] = draw(st.sampled_from([60, 300, 3600]))
        if draw(st.booleans()):
            record["uptime_s"] = draw(st.integers(0, 10**6))
    elif kind == "usage":
        record["period_s"] = 60
        names = draw(st.lists(st.sampled_from(sorted(UNITS)), min_size=1, max_size=3))
        record["quantities"] = [
            {"name": n, "value": draw(st.one_of(st.integers(0, 1000), st.floats(0, 1e6))), "unit": UNITS[n]}
            for n in names
        ]
    elif kind == "feature":
        record["feature"] = draw(st.sampled_from(["scan", "copy"]))
        record["count"] = draw(st.integers(1, 5))
    else:
        record["code"] = draw(st.sampled_from(["E1", "E2"]))
        record["severity"] = draw(st.sampled_from(["info", "warning", "error", "critical"]))
        if draw(st.booleans()):
            record["message"] = draw(st.sampled_from(["boom", "paper jam", "caf\u00e9"]))
    return record


@st.composite
def records(draw: st.DrawFn) -> Any:
    """Mostly valid records; some with a field dropped or broken; a few not objects at all."""
    record = draw(valid_records())
    how = draw(st.integers(0, 9))
    if how == 0:
        key = draw(st.sampled_from(sorted(record)))
        record[key] = draw(BAD)
    elif how == 1:
        record.pop(draw(st.sampled_from(sorted(record))))
    elif how == 2 and "quantities" in record:
        record["quantities"][0][draw(st.sampled_from(["name", "value", "unit"]))] = draw(BAD)
    elif how == 3 and draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from([5, "record", None, [1]]))
    return record


@st.composite
def landing(draw: st.DrawFn) -> list[tuple[str, bytes, int]]:
    """Landing messages (topic, payload, received_ms): batches, resent records, redeliveries, breakage."""
    batches = draw(st.lists(st.tuples(st.sampled_from(GATEWAYS), st.lists(records(), max_size=6)),
                            min_size=1, max_size=5))
    messages = []
    sent: list[Any] = []
    for seq, (ids, recs) in enumerate(batches):
        if len(sent) > 0 and draw(st.booleans()):  # a record the gateway sent before, sent again
            recs = [*recs, draw(st.sampled_from(sent))]
        sent += recs
        customer, site, gateway = ids
        envelope: dict[str, Any] = {"v": 1, "customer_id": customer, "site_id": site, "gateway_id": gateway,
                                    "batch_seq": seq, "sent_ms": RECEIVED, "records": recs}
        topic = CONTRACT.topic("gateway_batches", customer_id=customer, site_id=site, gateway_id=gateway)
        broken = draw(st.integers(0, 11))
        if broken == 0:
            envelope["v"] = draw(st.sampled_from([2, "1", None]))
        elif broken == 1:  # published on another gateway's topic
            topic = CONTRACT.topic("gateway_batches", customer_id="c9", site_id=site, gateway_id=gateway)
        text = json.dumps(envelope, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, None, 1])))
        payload = text.encode("utf-8", "surrogatepass")
        if broken == 2:
            payload = payload[: len(payload) // 2]
        elif broken == 3:
            payload = gzip.compress(payload)
        received = RECEIVED + draw(st.sampled_from([0, 0, 1, 60_000])) + seq
        messages.append((topic, payload, received))
    for message in draw(st.lists(st.sampled_from(messages), max_size=2)):  # batches delivered again
        messages.append((message[0], message[1], message[2] + draw(st.sampled_from([0, 90_000]))))
    return messages


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def per_element(messages: list[tuple[str, bytes, int]]) -> tuple[list[str], list[str], list[str], int, list[DeviceHour]]:
    """(rows, dead letters, survivors, duplicates, device hours) the per-element transforms give."""
    rows: list[dict[str, Any]] = []
    dead = []
    for topic, payload, received in messages:
        got, refused = LANDING.decode({"topic": topic, "payload": payload, "received_ms": received})
        rows += got
        dead += [dead_letter_row(d) for d in refused]
    survivors, hours = reference(rows)
    return (sorted(map(canonical, rows)), sorted(map(canonical, dead)), sorted(map(canonical, survivors)),
            len(rows) - len(survivors), hours)


def columnar(
    messages: list[tuple[str, bytes, int]], chunk: int, shards: int
) -> tuple[list[str], list[str], list[str], int, list[DeviceHour]]:
    """The same from the columnar transforms: chunks decoded, groups (event hour × device shard)
    deduplicated and rolled up."""
    tables, dead = [], []
    for start in range(0, len(messages), chunk):
        part = messages[start : start + chunk]
        decoded = ARROW.decode(*(list(column) for column in zip(*part, strict=True)))
        tables.append(decoded.table)
        dead += [dead_letter_row(d) for d in decoded.dead]
    rows = pa.concat_tables(tables)
    survivors, duplicates, hours = [], 0, []
    for _, shard in split_table(rows, group_keys(rows, shards)):
        kept, removed = dedupe_table(shard)
        survivors += kept.to_pylist()
        duplicates += removed
        hours += device_hours_from_table(device_hour_table(kept))
    return (sorted(map(canonical, rows.to_pylist())), sorted(map(canonical, dead)),
            sorted(map(canonical, survivors)), duplicates, sorted(hours, key=repr))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(landing(), st.integers(1, 4), st.integers(1, 3))
def test_both_paths_give_equal_records_dead_letters_survivors_and_device_hours(
    messages: list[tuple[str, bytes, int]], chunk: int, shards: int
) -> None:
    rows_a, dead_a, survivors_a, duplicates_a, hours_a = per_element(messages)
    rows_b, dead_b, survivors_b, duplicates_b, hours_b = columnar(messages, chunk, shards)
    assert rows_b == rows_a
    assert dead_b == dead_a
    assert survivors_b == survivors_a
    assert duplicates_b == duplicates_a
    assert hours_b == hours_a
    assert list(map(repr, hours_b)) == list(map(repr, hours_a))  # dict order too


def test_the_strategy_reaches_duplicates_dead_letters_and_hours_across_devices() -> None:
    """The property above is not vacuous: its draws hold copies, refusals and many device-hours."""
    counts = {"duplicates": 0, "dead": 0, "device_hours": 0}
    devices: set[str] = set()

    @settings(max_examples=30, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(landing())
    def tally(messages: list[tuple[str, bytes, int]]) -> None:
        _, dead, _, duplicates, hours = per_element(messages)
        counts["duplicates"] += duplicates
        counts["dead"] += len(dead)
        counts["device_hours"] += len(hours)
        devices.update(h.device_id for h in hours)

    tally()
    assert counts["duplicates"] > 0 and counts["dead"] > 0 and counts["device_hours"] > 20
    assert devices >= set(DEVICES)  # a broken device_id may still be an identifier ("1")
