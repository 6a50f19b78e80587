"""Gateway status messages: validated like telemetry, latest per gateway and minute."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from fleetpulse.pipeline.outputs.points import gateway_status_point
from fleetpulse.pipeline.transforms.status import (
    DEAD_LETTERS,
    DecodeGatewayStatus,
    InvalidStatus,
    parse_status,
)
from fleetpulse.schemas import load_contract
from fleetpulse.schemas.influx import load_influx_design

IDS = {"customer_id": "c-1", "site_id": "c-1-s1", "gateway_id": "c-1-gw1"}
TOPIC = load_contract().topic("gateway_status", **IDS)
T = 1_785_542_400_000  # a minute boundary


def status(state="online", **counters):
    body = {"v": 1, **IDS, "at_ms": T, "state": state,
            "counters": {"received_records": 10, "sent_records": 9, "sent_batches": 1, "dead_letters": 1,
                         "errors": 0, "reconnects": 2, "dropped_records": {"bad_identifier": 1}, **counters}}
    return json.dumps(body).encode()


def test_parse_sums_drops_and_floors_to_the_minute():
    row = parse_status(TOPIC, status(), T + 59_999)
    assert row == {**IDS, "received_records": 10, "sent_records": 9, "sent_batches": 1, "dead_letters": 1,
                   "errors": 0, "reconnects": 2, "dropped_records": 1, "state": "online",
                   "dead_letters_dropped": None, "spool_quarantined_files": None,  # (an older collector)
                   "received_ms": T + 59_999, "minute_ms": T}
    point = gateway_status_point(row)
    assert point["ts_s"] == T // 1000 and point["fields"]["online"] == 1 and point["fields"]["dropped_records"] == 1


def test_dead_letters_dropped_and_quarantined_spool_files_reach_the_influx_point():
    row = parse_status(TOPIC, status(dead_letters_dropped=40, spool_quarantined_files=2), T)
    assert row["dead_letters_dropped"] == 40 and row["spool_quarantined_files"] == 2
    point = gateway_status_point(row)
    assert point["fields"]["dead_letters_dropped"] == 40 and point["fields"]["spool_quarantined_files"] == 2
    # the sink checks every point against the design: both are declared int fields there
    design = load_influx_design(1)
    assert design.check(point["measurement"], point["tags"], point["fields"], point["ts_s"])[1] == point["fields"]
    # an older collector does not send them: absent from the row's point, not 0
    old = parse_status(TOPIC, status(), T)
    assert old["dead_letters_dropped"] is None and old["spool_quarantined_files"] is None
    assert {"dead_letters_dropped", "spool_quarantined_files"}.isdisjoint(gateway_status_point(old)["fields"])


def test_the_collectors_status_counters_are_all_carried():
    from fleetpulse.devices.collector.counters import Counters
    from fleetpulse.pipeline.transforms.status import COUNTERS

    # A counter added to the collector reaches InfluxDB unless it only restates another
    # (messages beside records, spooled beside sent).
    counted = set(Counters().snapshot()) - {"dropped_records", "spool_backlog_records", "spool_bytes"}
    carried = counted - {"received_messages", "spooled_records"}
    assert carried <= set(COUNTERS)


def test_last_will_has_no_counters():
    will = json.dumps({"v": 1, **IDS, "at_ms": T, "state": "offline", "counters": {}}).encode()
    row = parse_status(TOPIC, will, T)
    assert row["state"] == "offline" and row["sent_records"] is None and row["dropped_records"] is None
    assert gateway_status_point(row)["fields"] == {"online": 0, "state": "offline"}


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TOPIC, b"{nope", "not_json"),
        (TOPIC, b"[1]", "not_object"),
        (TOPIC, json.dumps({"state": "online"}).encode(), "missing_field"),
        (TOPIC, status(state="sleeping"), "bad_enum"),
        (TOPIC, status(sent_records=-1), "wrong_type"),
        (TOPIC, status(dropped_records=3), "wrong_type"),
        (TOPIC, status(dead_letters_dropped=-1), "wrong_type"),
        (TOPIC, status(spool_quarantined_files=True), "wrong_type"),
        (TOPIC.replace("c-1-gw1", "c-1-gw2"), status(), "topic_mismatch"),
    ],
)
def test_invalid_status_names_its_reason(topic, payload, reason):
    with pytest.raises(InvalidStatus) as err:
        parse_status(topic, payload, T)
    assert err.value.reason == reason


def test_decode_keeps_the_latest_per_minute_and_dead_letters_the_rest():
    landing = [
        {"topic": TOPIC, "payload": status(sent_records=5), "received_ms": T + 1_000},
        {"topic": TOPIC, "payload": status(sent_records=7), "received_ms": T + 2_000},
        {"topic": TOPIC, "payload": status(sent_records=8), "received_ms": T + 61_000},
        {"topic": TOPIC, "payload": b"garbage", "received_ms": T},
    ]
    with BeamTestPipeline() as p:
        out = p | beam.Create(landing) | DecodeGatewayStatus()
        assert_that(out["main"] | beam.Map(lambda r: (r["minute_ms"], r["sent_records"])),
                    equal_to([(T, 7), (T + 60_000, 8)]), label="latest")
        assert_that(out[DEAD_LETTERS] | beam.Map(lambda d: d["reason"]), equal_to(["not_json"]), label="dead")


def test_offline_status_marks_the_customer_day():
    from fleetpulse.pipeline.model import CustomerDay
    from fleetpulse.pipeline.transforms.scoring import SIGNALS, ScoreCustomers

    def days_seen(account, days, model, fleet, customer_id):
        # A fake scorer: one "signal" per day it was given, carrying the offline marks.
        return [(customer_id, d.day, d.offline_gateways) for d in days], []

    def day(customer, iso_day):
        return CustomerDay(customer_id=customer, day=iso_day, reporting_devices=("d1",), active_devices=("d1",),
                           gateways=("c-1-gw1",), heartbeats=1, expected_heartbeats=1.0, heartbeat_interval_s=86400,
                           usage={}, features={}, errors=0, critical_errors=0, error_fw={}, device_fw={})

    offline = json.dumps({"v": 1, **IDS, "at_ms": T, "state": "offline", "counters": {}}).encode()
    landing = [
        {"topic": TOPIC, "payload": status(), "received_ms": T},  # online: no mark
        {"topic": TOPIC, "payload": offline, "received_ms": T + 3_600_000},
    ]
    with BeamTestPipeline() as p:
        decoded = p | "Status" >> beam.Create(landing) | DecodeGatewayStatus()
        days = p | "Days" >> beam.Create([day("c-1", "2026-08-01"), day("c-1", "2026-08-02"), day("c-2", "2026-08-01")])
        scored = days | ScoreCustomers({}, None, days_seen, status=decoded["main"])
        marked = scored[SIGNALS]
        assert_that(marked, equal_to([("c-1", "2026-08-01", ("c-1-gw1",)), ("c-1", "2026-08-02", ()),
                                      ("c-2", "2026-08-01", ())]))
