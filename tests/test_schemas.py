"""The telemetry contract's validator on literal data: every reason, and what passes."""

from __future__ import annotations

import json

import pytest

from fleetpulse.schemas import REASONS, Validator, dead_letter, load_contract

NOW_MS = 1_785_600_000_000  # 2026-08-01T16:00:00Z

V = Validator()


def usage(**overrides):
    record = {
        "device_id": "c-0001-d001", "ts_ms": NOW_MS - 60_000, "boot": 2, "seq": 17, "kind": "usage",
        "fw": "3.2.1", "period_s": 3600,
        "quantities": [{"name": "runtime", "value": 1800, "unit": "s"}, {"name": "energy", "value": 0.4, "unit": "kWh"}],
    }
    record.update(overrides)
    return record


VALID = [
    usage(),
    {"device_id": "d1", "ts_ms": NOW_MS, "boot": 0, "seq": 0, "kind": "heartbeat", "fw": "1.0", "interval_s": 3600},
    {"device_id": "d1", "ts_ms": NOW_MS, "boot": 0, "seq": 1, "kind": "heartbeat", "fw": "1.0.0-rc.1",
     "interval_s": 60, "uptime_s": 12},
    {"device_id": "d1", "ts_ms": NOW_MS, "boot": 0, "seq": 2, "kind": "feature", "fw": "1.0", "feature": "scan", "count": 3},
    {"device_id": "d1", "ts_ms": NOW_MS, "boot": 0, "seq": 3, "kind": "error", "fw": "1.0", "code": "E042",
     "severity": "critical", "message": "paper jam"},
    usage(v=1, extra_field_from_a_newer_device="ignored"),
]


@pytest.mark.parametrize("record", VALID)
def test_valid_records_pass_and_keep_only_known_fields(record):
    out = V.record(record, now_ms=NOW_MS)
    assert out["device_id"] == record["device_id"]
    assert "extra_field_from_a_newer_device" not in out
    assert "v" not in out


def test_quantities_are_normalised_to_floats():
    out = V.record(usage(quantities=[{"name": "cycles", "value": 3, "unit": "count"}]), now_ms=NOW_MS)
    assert out["quantities"] == [{"name": "cycles", "value": 3.0, "unit": "count"}]


INVALID = [
    ("not_object", [1, 2]),
    ("unsupported_version", usage(v=2)),
    # JSON's true is Python's True, and True == 1: a bool is never an integer here.
    ("wrong_type", usage(v=True)),
    ("wrong_type", usage(v=1.0)),
    ("wrong_type", usage(ts_ms=True)),
    ("wrong_type", usage(boot=False)),
    ("missing_field", {k: v for k, v in usage().items() if k != "seq"}),
    ("missing_field", {k: v for k, v in usage().items() if k != "quantities"}),
    ("wrong_type", usage(seq="17")),
    ("wrong_type", usage(seq=True)),
    ("out_of_range", usage(seq=-1)),
    ("out_of_range", usage(boot=2**32)),
    ("out_of_range", usage(period_s=0)),
    ("bad_identifier", usage(device_id="has space")),
    ("bad_identifier", usage(device_id="x" * 65)),
    ("bad_identifier", usage(device_id="line\nbreak")),
    ("bad_identifier", usage(device_id="trailing\n")),
    ("bad_identifier", usage(device_id="ünïcode")),
    ("unknown_kind", usage(kind="telemetry")),
    ("bad_enum", {**VALID[4], "severity": "fatal"}),
    ("bad_firmware", usage(fw="latest")),
    ("bad_quantity", usage(quantities=[])),
    ("bad_quantity", usage(quantities=[{"name": "runtime", "value": -1, "unit": "s"}])),
    ("bad_quantity", usage(quantities=[{"name": "runtime", "value": float("nan"), "unit": "s"}])),
    ("bad_quantity", usage(quantities=[{"name": "runtime", "value": "5", "unit": "s"}])),
    ("bad_quantity", usage(quantities=["runtime"])),
    ("bad_unit", usage(quantities=[{"name": "runtime", "value": 1, "unit": "hours"}])),
    ("string_too_long", {**VALID[4], "message": "x" * 257}),
    ("event_time_in_future", usage(ts_ms=NOW_MS + 301_000)),
    ("event_time_too_old", usage(ts_ms=0)),
]


@pytest.mark.parametrize(("reason", "record"), INVALID, ids=[f"{r}-{i}" for i, (r, _) in enumerate(INVALID)])
def test_each_invalid_record_names_its_reason(reason, record):
    valid, rejected = V.records([record], now_ms=NOW_MS)
    assert valid == []
    assert [r.reason for r in rejected] == [reason]
    assert rejected[0].index == 0 and rejected[0].record == record


def test_every_reason_is_exercised_somewhere():
    exercised = {r for r, _ in INVALID} | {
        "payload_too_large", "not_utf8", "not_json", "too_many_records", "topic_mismatch",
        "bad_compression", "device_mismatch",
    }
    assert exercised == set(REASONS)


def test_a_record_on_another_devices_topic_is_a_device_mismatch():
    own, spoofed = usage(seq=1), usage(seq=2, device_id="other-customers-device")
    payload = json.dumps([own, spoofed, usage(seq=3, device_id="bad id")]).encode()
    valid, rejected = V.device_payload(payload, now_ms=NOW_MS, device_id=own["device_id"])
    assert [r["seq"] for r in valid] == [1]
    assert [(r.reason, r.index) for r in rejected] == [("device_mismatch", 1), ("bad_identifier", 2)]
    assert "other-customers-device" in rejected[0].detail and rejected[0].record == spoofed


def test_a_batch_without_a_version_is_missing_a_field_and_a_bool_version_is_not_an_integer():
    batch = {"customer_id": "c1", "site_id": "s1", "gateway_id": "g1", "batch_seq": 1,
             "sent_ms": NOW_MS, "records": [usage()]}
    assert [r.reason for r in V.envelope(json.dumps(batch).encode(), now_ms=NOW_MS)[2]] == [
        "missing_field"]
    for version in (True, "1", 1.0):
        payload = json.dumps({**batch, "v": version}).encode()
        assert [r.reason for r in V.envelope(payload, now_ms=NOW_MS)[2]] == ["wrong_type"]


def test_device_payload_array_keeps_good_records_and_rejects_bad_ones():
    payload = json.dumps([usage(seq=1), usage(seq=2, device_id="bad id"), usage(seq=3)]).encode()
    valid, rejected = V.device_payload(payload, now_ms=NOW_MS)
    assert [r["seq"] for r in valid] == [1, 3]
    assert [(r.reason, r.index) for r in rejected] == [("bad_identifier", 1)]


def test_device_payload_single_object():
    valid, rejected = V.device_payload(json.dumps(usage()).encode(), now_ms=NOW_MS)
    assert len(valid) == 1 and rejected == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "not_utf8"),
        (b"{not json", "not_json"),
        (b"x" * 262_145, "payload_too_large"),
        (json.dumps([0] * 5001).encode(), "too_many_records"),
    ],
)
def test_device_payload_rejected_whole(payload, reason):
    valid, rejected = V.device_payload(payload, now_ms=NOW_MS)
    assert valid == []
    assert [(r.reason, r.index) for r in rejected] == [(reason, None)]


def envelope(**overrides):
    env = {"v": 1, "customer_id": "c-0001", "site_id": "c-0001-s1", "gateway_id": "c-0001-gw1",
           "batch_seq": 4, "sent_ms": NOW_MS, "records": [usage(seq=1), usage(seq=2, kind="nope")]}
    env.update(overrides)
    return json.dumps(env).encode()


def test_envelope_header_and_records():
    header, valid, rejected = V.envelope(envelope(), now_ms=NOW_MS)
    assert header == {"v": 1, "customer_id": "c-0001", "site_id": "c-0001-s1", "gateway_id": "c-0001-gw1",
                      "batch_seq": 4, "sent_ms": NOW_MS}
    assert [r["seq"] for r in valid] == [1]
    assert [(r.reason, r.index) for r in rejected] == [("unknown_kind", 1)]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [({"v": 2}, "unsupported_version"), ({"customer_id": "a/b"}, "bad_identifier"),
     ({"records": "x"}, "missing_field"), ({"batch_seq": -1}, "out_of_range")],
)
def test_bad_envelope_header_rejects_the_whole_batch(overrides, reason):
    header, valid, rejected = V.envelope(envelope(**overrides), now_ms=NOW_MS)
    assert header is None and valid == []
    assert [r.reason for r in rejected] == [reason]


def test_dead_letter_keeps_raw_payload_or_record():
    _, rejected = V.device_payload(b"\xff{", now_ms=NOW_MS)
    row = dead_letter(rejected[0], source="gateway:g1", topic="t", at_ms=1, payload=b"\xff{")
    assert row["reason"] == "not_utf8" and row["payload_encoding"] == "base64" and row["payload"] == "/3s="
    _, rejected = V.device_payload(json.dumps([usage(fw="x")]).encode(), now_ms=NOW_MS)
    row = dead_letter(rejected[0], source="pipeline", topic="t", at_ms=1, payload=b"ignored")
    assert row["record"]["fw"] == "x" and row["payload"] is None
    json.dumps(row)  # serialisable as is


def test_contract_topics():
    contract = load_contract()
    assert contract.topic("gateway_batches", customer_id="c", site_id="s", gateway_id="g") == (
        "fleetpulse/v1/customers/c/sites/s/gateways/g/batches"
    )
    assert contract.subscription("device_telemetry") == "fleetpulse/v1/devices/+/telemetry"
    with pytest.raises(ValueError, match="v9"):
        load_contract(9)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"kind": ["heartbeat"]}, "unknown_kind"),  # unhashable: once a TypeError
        ({"kind": "usage", "period_s": 60, "quantities": [{"name": "r", "value": 10**400, "unit": "s"}]},
         "bad_quantity"),  # too large for a float: once an OverflowError
        ({"kind": "error", "code": "E1", "severity": "error", "message": "\ud800"}, "not_utf8"),
        ({"uptime_s": 2**64}, "out_of_range"),  # beyond the lake's int64 columns
    ],
)
def test_hostile_values_are_rejections_not_crashes(change, reason):
    rec = {"device_id": "d1", "ts_ms": 1_700_000_000_000, "boot": 1, "seq": 2, "fw": "1.2.3",
           "kind": "heartbeat", "interval_s": 60} | change
    valid, rejected = Validator(load_contract()).records([rec])
    assert valid == [] and [r.reason for r in rejected] == [reason]


def test_a_payload_nested_too_deeply_is_not_json():
    assert [r.reason for r in Validator(load_contract()).device_payload(b"[" * 100_000)[1]] == ["not_json"]


def test_a_dead_letter_is_valid_utf8_whatever_the_record_held():
    # A lone surrogate is valid JSON ("\ud800") but no UTF-8 encoder takes it.
    hostile = json.dumps([usage(fw="\ud800"), {"\udfff": ["\ud800" * 3], "seq": [[[[1]]]]}]).encode()
    _, rejected = V.device_payload(hostile, now_ms=NOW_MS)
    assert len(rejected) == 2
    for rejection in rejected:
        row = dead_letter(rejection, source="pipeline", topic="t\udc80", at_ms=1)
        json.dumps(row, ensure_ascii=False).encode("utf-8")  # the collector's file, Beam's coders
    assert row["record"] == {"\\udfff": ["\\ud800\\ud800\\ud800"], "seq": [[[[1]]]]}


def test_a_dead_letter_sample_is_cut_and_says_so():
    payload = ("é" * 200).encode()  # not JSON; two bytes a character
    _, rejected = V.device_payload(payload, now_ms=NOW_MS)
    row = dead_letter(rejected[0], source="gateway:g1", topic="t", at_ms=1, payload=payload,
                      sample_bytes=101)
    assert row["payload"] == "é" * 50 and row["payload_encoding"] == "utf-8"  # not cut mid-character
    assert row["payload_bytes"] == 400 and row["truncated"] is True
    whole = dead_letter(rejected[0], source="gateway:g1", topic="t", at_ms=1, payload=payload)
    assert whole["payload"] == "é" * 200 and whole["truncated"] is False
    _, rejected = V.device_payload(json.dumps([usage(fw="x" * 500)]).encode(), now_ms=NOW_MS)
    row = dead_letter(rejected[0], source="gateway:g1", topic="t", at_ms=1, sample_bytes=64)
    assert isinstance(row["record"], str) and len(row["record"]) == 64 and row["truncated"] is True
