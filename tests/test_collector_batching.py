"""Batcher: envelopes by count, time and size, on literal records."""

from __future__ import annotations

import json

import pytest

from fleetpulse.devices.collector.batching import Batcher, MessageToken, encode_record
from fleetpulse.schemas import Validator

from .test_collector_support import NOW_MS, record

IDS = {"customer_id": "c-0001", "site_id": "c-0001-s1", "gateway_id": "c-0001-gw1"}


def batcher(**overrides: int) -> Batcher:
    options = {"max_records": 3, "max_interval_ms": 1000, "max_payload_bytes": 262144, **overrides}
    return Batcher(**IDS, **options)


def token(mid: int = 1) -> MessageToken:
    return MessageToken(mid=mid, qos=1, generation=1)


def test_closes_at_max_records_with_consecutive_batch_seq() -> None:
    b = batcher()
    t = token()
    closed = []
    for seq in range(7):
        closed += b.add(encode_record(record(seq=seq)), t, NOW_MS)
    assert [len(x) for x in closed] == [3, 3]
    assert [x.seq for x in closed] == [0, 1]
    assert b.open_records == 1
    assert t.refs == 3  # one per batch holding its records, the open one included


def test_closes_by_time_since_first_record() -> None:
    b = batcher(max_records=100)
    b.add(encode_record(record(seq=0)), token(), NOW_MS)
    b.add(encode_record(record(seq=1)), token(2), NOW_MS + 900)
    assert b.deadline_ms() == NOW_MS + 1000
    assert not b.due(NOW_MS + 999)
    assert b.due(NOW_MS + 1000)
    assert b.due(NOW_MS - 1)  # the clock stepped backwards: don't wait for it
    batch = b.close()
    assert batch is not None and len(batch) == 2 and [t.mid for t in batch.tokens] == [1, 2]
    assert b.close() is None and b.deadline_ms() is None and not b.due(NOW_MS + 10_000)


def test_envelope_matches_the_contract() -> None:
    b = batcher()
    records = [record(seq=i, kind=k) for i, k in enumerate(("usage", "feature", "error"))]
    (batch,) = [x for r in records for x in b.add(encode_record(r), token(), NOW_MS)]
    payload = b.encode(batch, NOW_MS + 5)
    header, valid, rejected = Validator().envelope(payload, now_ms=NOW_MS)
    assert rejected == []
    assert header == {"v": 1, **IDS, "batch_seq": 0, "sent_ms": NOW_MS + 5}
    assert [r["seq"] for r in valid] == [0, 1, 2]
    assert json.loads(payload)["records"][1] == records[1]


def test_splits_so_no_envelope_exceeds_max_payload_bytes() -> None:
    limit = 2000
    b = batcher(max_records=1000, max_payload_bytes=limit)
    records = [encode_record(record(seq=i, kind="error", message="x" * (i % 200))) for i in range(60)]
    closed = [x for r in records for x in b.add(r, token(), NOW_MS)]
    last = b.close()
    assert last is not None
    batches = [*closed, last]
    assert len(batches) > 3
    sizes = [len(b.encode(x, 10**16 - 1)) for x in batches]  # widest possible header
    assert max(sizes) <= limit
    # each batch was cut only because the next record would not fit
    for batch, following in zip(batches, batches[1:], strict=False):
        assert len(b.encode(batch, 10**16 - 1)) + 1 + len(following.records[0]) > limit
    assert [json.loads(r)["seq"] for x in batches for r in x.records] == list(range(60))


def test_record_larger_than_an_envelope_is_refused() -> None:
    b = batcher(max_payload_bytes=400)
    big = encode_record(record(kind="error", message="y" * 256))
    assert not b.fits(big)
    with pytest.raises(ValueError):
        b.add(big, token(), NOW_MS)


def test_header_that_cannot_fit_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        batcher(max_payload_bytes=50)
