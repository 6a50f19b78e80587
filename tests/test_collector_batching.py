"""Envelope: gateway batches on literal records, with and without compression."""

from __future__ import annotations

import gzip
import json

import pytest

from fleetpulse.devices.collector.batching import Envelope, encode_record
from fleetpulse.schemas import Validator, load_contract

from .test_collector_support import NOW_MS, record

IDS = {"customer_id": "c-0001", "site_id": "c-0001-s1", "gateway_id": "c-0001-gw1"}


def envelope(**kw) -> Envelope:
    return Envelope(**IDS, max_payload_bytes=kw.pop("max_payload_bytes", 262144), **kw)


def test_envelope_carries_ids_seq_sent_time_and_records_in_order() -> None:
    records = [encode_record(record(seq=i)) for i in range(3)]
    doc = json.loads(envelope().encode(records, batch_seq=7, sent_ms=NOW_MS))
    assert {k: doc[k] for k in IDS} == IDS
    assert doc["batch_seq"] == 7 and doc["sent_ms"] == NOW_MS
    assert [r["seq"] for r in doc["records"]] == [0, 1, 2]


def test_the_body_budget_is_exact_at_the_payload_limit() -> None:
    env = envelope(max_payload_bytes=2000)
    one = encode_record(record(seq=1))
    n = (env.max_body_bytes + 1) // (len(one) + 1)
    fitting = [one] * n
    assert env.body_bytes(fitting) <= env.max_body_bytes
    assert len(env.encode(fitting, batch_seq=2**53 - 1, sent_ms=10**16 - 1)) <= 2000
    with pytest.raises(ValueError):
        env.encode(fitting + [one], batch_seq=1, sent_ms=NOW_MS)
    assert not env.fits(b"x" * (env.max_body_bytes + 1))


def test_gzip_batches_are_deterministic_and_pass_the_shared_validator() -> None:
    env = envelope(compression="gzip")
    records = [encode_record(record(seq=i)) for i in range(50)]
    payload = env.encode(records, batch_seq=1, sent_ms=NOW_MS)
    assert payload[:2] == b"\x1f\x8b"
    assert payload == env.encode(records, batch_seq=1, sent_ms=NOW_MS)  # a resend is identical
    assert len(payload) < len(gzip.decompress(payload)) / 3
    header, valid, rejected = Validator(load_contract()).envelope(payload, now_ms=NOW_MS)
    assert rejected == [] and header is not None
    assert [r["seq"] for r in valid] == list(range(50))


def test_an_empty_batch_is_refused() -> None:
    with pytest.raises(ValueError):
        envelope().encode([], batch_seq=0, sent_ms=NOW_MS)
