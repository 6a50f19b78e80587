"""Hostile input never stops a decoder: any bytes on any topic become lake rows or dead letters.

Issue 12: one landed batch whose record held a lone surrogate (``"\\ud800"``,
valid JSON) made every later backfill fail inside DecodeBatches, because the
dead letter carried a string no UTF-8 encoder takes. The class is wider than
surrogates: integers past Python's digit limit, NaN and Infinity, nesting near
the recursion limit, non-UTF-8 topics, non-dict landing rows, gzip bombs.

* an end-to-end regression: a lake holding such messages, backfilled on both
  engines to completion (good records written, each bad one a dead letter
  with its reason);
* Hypothesis properties: arbitrary bytes and arbitrary JSON on arbitrary
  topics through LandingDecoder, the ArrowDecoder and the MQTT
  message → landing row → landing file → decoder path; every input accounted
  for, every output encoded with the coder of its PCollection (and through
  Arrow for lake rows, and as a strict JSON line for dead letters);
* the per-element and columnar decoders give equal rows and dead letters.

The long-running fuzz target over the same properties is ``make fuzz``
(``tests/fuzz/``, not collected here).
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetpulse.devices.simulator.simulation import SimulationConfig
from fleetpulse.errors import quote
from fleetpulse.pipeline.health.config import load_health_model
from fleetpulse.pipeline.jobs.backfill import JobConfig
from fleetpulse.pipeline.jobs.backfill import run as run_backfill
from fleetpulse.pipeline.lake.landing import LandingWriter, iter_landing_rows
from fleetpulse.pipeline.outputs.bundles import read_json_lines_parts
from fleetpulse.pipeline.transforms.arrow_decode import ArrowDecoder
from fleetpulse.pipeline.transforms.decode import LandingDecoder
from fleetpulse.pipeline.transforms.status import InvalidStatus, parse_status
from fleetpulse.schemas import REASONS, load_contract
from fleetpulse.schemas.accounts import load_accounts

from . import hostile
from .hostile import strict_json
from .servers import Server
from .test_ingest_job import create_session, finish, ingest
from .test_ingest_support import publish, seeded_fleet
from .test_jobs import RECEIVED_MS, land_fleet

CONTRACT = load_contract()
IN_PROCESS = ["--runner=FnApiRunner"]
T_MS = RECEIVED_MS - 3_600_000


def hostile_record(seq: int, t_ms: int = T_MS, **change: Any) -> dict[str, Any]:
    record = {"device_id": "hostile-d1", "ts_ms": t_ms + seq, "boot": 1, "seq": seq,
              "kind": "heartbeat", "fw": "2.4.1", "interval_s": 60}
    return {**record, **change}


def poison(ids: dict[str, str], t_ms: int = T_MS) -> list[tuple[str, bytes]]:
    """Poison messages on a gateway's topic, beside good records of device hostile-d1
    (seqs :data:`GOOD_SEQS`); each bad one is one of :data:`EXPECTED_DEAD`."""
    topic = CONTRACT.topic("gateway_batches", **ids)

    def batch(*records: Any) -> str:
        return json.dumps({"v": 1, **ids, "batch_seq": 10**6, "sent_ms": t_ms, "records": list(records)})

    def record(seq: int, **change: Any) -> dict[str, Any]:
        return hostile_record(seq, t_ms, **change)

    # Integers past Python's 4300-digit conversion limit (json.loads raised ValueError): valid JSON,
    # refused where the contract wants an int, ignored in a field it does not know.
    digits = batch(record(8), record(9, note=1)).replace('"boot": 1', '"boot": ' + "7" * 5000, 1)
    # Nesting past the Validator's bound, in a field nobody reads (Arrow's reader would take it).
    deep = batch(record(10, note=0)).replace('"note": 0', '"note": ' + "[" * 600 + "]" * 600)
    texts = [
        # The harness's message: good records around one whose fw is a lone surrogate.
        batch(record(1), record(2, fw="\ud800"), record(3)),
        # A key that is a lone surrogate (unknown fields are ignored: the record is good).
        batch(record(4, **{"\udfff": "\ud800"})),
        # NaN (Python's json reads it) and a nested value where an int belongs.
        batch({**record(5), "seq": float("nan")}, record(6, boot=[[[[[[1]]]]]]), record(7)),
        digits.replace('"note": 1', '"note": ' + "7" * 5000),
        deep,
    ]
    raw = [b"\xff\xfe{\x00", b"", gzip.compress(b"[" * 10_000_000)]  # not UTF-8, nothing, a gzip bomb
    return [(topic, text.encode()) for text in texts] + [(topic, payload) for payload in raw]


GOOD_SEQS = [1, 3, 4, 7, 9]
EXPECTED_DEAD = sorted([
    ("not_utf8", 1),  # fw "\ud800"
    ("wrong_type", 0),  # seq NaN
    ("wrong_type", 1),  # boot nested
    ("wrong_type", 0),  # boot of 5000 digits
    ("not_json", None),  # nested 600 deep
    ("not_utf8", None),  # \xff\xfe
    ("not_json", None),  # empty
    ("payload_too_large", None),  # the gzip bomb
], key=str)


def check_poison_outcome(archived: list[dict[str, Any]], lines: list[str], ids: dict[str, str]) -> None:
    """The good records of hostile-d1 were archived; every bad one is a dead letter, one strict JSON line."""
    mine = [r for r in archived if r["device_id"] == "hostile-d1"]
    assert sorted(r["seq"] for r in mine) == GOOD_SEQS
    assert {r["customer_id"] for r in mine} == {ids["customer_id"]}
    letters = [strict_json(line) for line in lines]  # valid UTF-8 and strict JSON, every line
    assert sorted(((d["reason"], d["index"]) for d in letters), key=str) == EXPECTED_DEAD
    assert all(d["reason"] in REASONS and d["detail"] for d in letters)
    surrogate = next(d for d in letters if d["reason"] == "not_utf8" and d["index"] == 1)
    assert surrogate["record"]["fw"] == "\\ud800" and surrogate["record"]["seq"] == 2
    assert all(d["payload_bytes"] is not None and d["payload_encoding"] for d in letters if d["index"] is None)


def archive_rows(lake: Path) -> list[dict[str, Any]]:
    return [r for f in sorted((lake / "records").glob("dt=*/hour=*/part-*.parquet")) for r in pq.read_table(f).to_pylist()]


@pytest.fixture(scope="module")
def poisoned_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("poisoned")
    sim = SimulationConfig(seed=12, customers=1, days=1)
    accounts = land_fleet(root, sim, status=False)
    gateway = sim.build_fleet().gateways[0]
    ids = {"customer_id": gateway.customer_id, "site_id": gateway.site_id, "gateway_id": gateway.gateway_id}
    writer = LandingWriter(root / "lake")
    for topic, payload in poison(ids):
        writer.add(topic, payload, RECEIVED_MS)
    writer.commit()
    return root / "lake", accounts, ids


@pytest.mark.parametrize("engine", ["columnar", "per_element"])
def test_a_backfill_over_poison_messages_writes_the_good_records_and_dead_letters_the_rest(
    poisoned_lake: tuple[Path, Path, dict[str, str]], tmp_path: Path, engine: str
) -> None:
    lake, accounts, ids = poisoned_lake
    out = tmp_path / "out"
    job = JobConfig(lake=str(lake), out=str(out), accounts=load_accounts(accounts),
                    model=load_health_model(None), engine=engine)
    run_backfill(job, IN_PROCESS)  # it must finish: before the fix it raised UnicodeEncodeError
    check_poison_outcome(archive_rows(lake), (out / "dead_letters.jsonl").read_text("utf-8").splitlines(), ids)


@pytest.mark.integration
def test_the_streaming_job_lands_the_good_records_and_dead_letters_the_poison(mosquitto: Server, tmp_path: Path) -> None:
    """``fleetpulse ingest`` against a real broker: the same poison messages, interleaved with a fleet."""
    fleet = seeded_fleet(seed=12, gateways=1, devices_per_gateway=2, records_per_device=20)
    ids = {"customer_id": "c0", "site_id": "c0-s1", "gateway_id": "c0-gw0"}
    messages = [*fleet.messages[:1], *poison(ids, t_ms=int(time.time() * 1000) - 3_600_000), *fleet.messages[1:]]
    lake = tmp_path / "lake"
    create_session(mosquitto, lake)
    publish(mosquitto.port, messages)
    finish(ingest(mosquitto, lake, "--idle-stop-ms", "800"))  # before the fix the job failed
    archived = archive_rows(lake)
    assert {(r["device_id"], r["boot"], r["seq"]) for r in archived if r["device_id"] != "hostile-d1"} == fleet.unique
    check_poison_outcome(archived, read_json_lines_parts(lake / "out" / "dead_letters"), ids)


# ------------------------------------------------------------- one case each


def both_ways(payload: bytes, topic: str = hostile.TOPIC) -> tuple[list[str], list[str], int]:
    """(rows, dead letters) as canonical JSON from each decoder, which must agree; and the plain count."""
    rows, dead = LandingDecoder().decode({"topic": topic, "payload": payload, "received_ms": hostile.RECEIVED})
    decoded = ArrowDecoder().decode([topic], [payload], [hostile.RECEIVED])
    hostile.check_rows(rows)
    letters = hostile.check_dead(dead)
    assert sorted(map(hostile.canonical, decoded.table.to_pylist())) == sorted(map(hostile.canonical, rows))
    assert sorted(map(hostile.canonical, hostile.check_dead(decoded.dead))) == sorted(map(hostile.canonical, letters))
    return [r["seq"] for r in rows], [d["reason"] for d in letters], decoded.plain_messages


def with_field(value_text: str, record: dict[str, Any] = hostile.HEARTBEAT) -> bytes:
    """A batch of one record carrying an unknown field ``note`` written as ``value_text``."""
    text = hostile.dumps({**hostile.ENVELOPE, "records": [{**record, "note": 0}]})
    return text.replace('"note": 0', f'"note": {value_text}').encode()


def test_nesting_is_bounded_alike_by_every_decoder_whatever_the_stack() -> None:
    # envelope { records [ record { and the note's arrays: 3 + n levels.
    assert both_ways(with_field("[" * 509 + "]" * 509))[:2] == ([0], [])
    for n in (510, 900, 960, 990, 1200, 100_000):  # json.loads alone gives up near 1000 less the stack
        assert both_ways(with_field("[" * n + "]" * n))[:2] == ([], ["not_json"]), n

    def deeper(levels: int) -> Any:
        return deeper(levels - 1) if levels else both_ways(with_field("[" * 960 + "]" * 960))

    assert deeper(200)[:2] == ([], ["not_json"])  # the same verdict 200 frames further down


def test_a_value_nested_deep_where_the_contract_wants_a_scalar_is_a_dead_letter_with_its_record() -> None:
    seq, reasons, _ = both_ways(with_field("0").replace(b'"seq": 0', b'"seq": ' + b"[" * 500 + b"]" * 500))
    assert (seq, reasons) == ([], ["wrong_type"])
    assert quote([[[[1]]]]) == "[[[[1]]]]" and quote({"a": (1,)}, 8) == "{'a':..."
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    assert quote(nested).startswith("[[[[") and quote(10**5000) == "<int of 16610 bits>"


def test_an_integer_too_long_for_python_is_read_as_infinity_by_both_decoders() -> None:
    huge = "9" * 4301
    assert both_ways(with_field(huge))[:2] == ([0], [])  # an unknown field: ignored, as Arrow ignores it
    seq, reasons, _ = both_ways(with_field("0").replace(b'"seq": 0', b'"seq": -' + huge.encode()))
    assert (seq, reasons) == ([], ["wrong_type"])
    usage = with_field("0", hostile.USAGE).replace(b'"value": 42', b'"value": ' + huge.encode())
    assert both_ways(usage)[:2] == ([], ["bad_quantity"])


def test_a_unit_that_is_a_list_or_an_object_is_a_bad_unit() -> None:
    for unit in ('["s"]', '{"s": 1}'):
        payload = with_field("0", hostile.USAGE).replace(b'"unit": "s"', b'"unit": ' + unit.encode())
        assert both_ways(payload)[:2] == ([], ["bad_unit"])  # was TypeError: unhashable type


def test_nan_and_infinity_in_a_dead_letter_are_kept_as_text_so_the_line_is_strict_json() -> None:
    payload = hostile.dumps({**hostile.ENVELOPE, "records": [{**hostile.HEARTBEAT, "seq": float("nan"),
                                                               "uptime_s": float("-inf")}]}).encode()
    _, reasons, _ = both_ways(payload)
    (letter,) = hostile.check_dead(LandingDecoder().decode(
        {"topic": hostile.TOPIC, "payload": payload, "received_ms": hostile.RECEIVED})[1])
    assert reasons == ["wrong_type"] and (letter["record"]["seq"], letter["record"]["uptime_s"]) == ("nan", "-inf")


def test_a_landing_row_the_lake_could_not_hold_is_a_dead_letter() -> None:
    decoder = LandingDecoder()
    good = hostile.to_bytes(hostile.dumps({**hostile.ENVELOPE, "records": [hostile.HEARTBEAT]}))
    for landing in (
        {"topic": hostile.TOPIC, "payload": good, "received_ms": 2**63},  # beyond the int64 column
        {"topic": hostile.TOPIC, "payload": good, "received_ms": True},
        {"topic": hostile.TOPIC, "payload": good, "received_ms": None},
        {"topic": None, "payload": good, "received_ms": hostile.RECEIVED},
        ["not", "a", "row"],
    ):
        rows, dead = decoder.decode(landing)
        assert rows == [] and [d["reason"] for d in hostile.check_dead(dead)] == ["wrong_type"]
    # A str payload with a lone surrogate (a source bug): kept, refused as not UTF-8.
    rows, dead = decoder.decode({"topic": hostile.TOPIC, "payload": '{"v": 1, "x": "\ud800"}',
                                 "received_ms": hostile.RECEIVED})
    assert [d["reason"] for d in hostile.check_dead(dead)] == ["not_utf8"]


def test_a_topic_that_is_not_utf8_lands_as_escaped_text_and_decodes_to_a_topic_mismatch(tmp_path: Path) -> None:
    raw = b"fleetpulse/v1/customers/c\xff1/sites/s1/gateways/g1/batches"
    good = hostile.to_bytes(hostile.dumps({**hostile.ENVELOPE, "records": [hostile.HEARTBEAT]}))
    # paho raises on message.topic, in its network thread: the reader would stop for good.
    with pytest.raises(UnicodeDecodeError):
        _ = hostile.paho_message(raw, good).topic
    reader = hostile.Reader()
    delivery = reader.deliver(hostile.paho_message(raw, good))
    assert delivery is not None and delivery.topic == "fleetpulse/v1/customers/c\\xff1/sites/s1/gateways/g1/batches"
    # The landing writer takes it (and a str with a lone surrogate) instead of failing the whole file.
    writer = LandingWriter(tmp_path)
    writer.add(delivery.topic, delivery.payload, delivery.received_ms)
    writer.add("fleetpulse/\ud800", good, hostile.RECEIVED)
    path = writer.commit()
    assert path is not None
    landed = list(iter_landing_rows(path))
    assert [r["topic"] for r in landed] == [delivery.topic, "fleetpulse/\\ud800"]
    for row in landed:
        assert both_ways(row["payload"], row["topic"])[1] == ["topic_mismatch"]


def test_a_status_message_too_long_a_number_or_too_deep_is_not_json() -> None:
    ids = {"customer_id": "c1", "site_id": "s1", "gateway_id": "g1"}
    topic = CONTRACT.topic("gateway_status", **ids)
    for payload in (b'{"counters": {"sent_records": ' + b"9" * 5000 + b"}}", b"[" * 100_000):
        with pytest.raises(InvalidStatus) as refused:  # was ValueError / RecursionError
            parse_status(topic, payload, hostile.RECEIVED)
        assert refused.value.reason == "not_json"


# ------------------------------------------------------------------ properties
# The bodies are hostile.py's, shared with the fuzz target (make fuzz); here with a CI budget.

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(SETTINGS, max_examples=120)
@given(hostile.LANDING_CHUNKS)
def test_any_landing_row_becomes_lake_rows_or_dead_letters_that_every_encoder_takes(rows: list[Any]) -> None:
    hostile.decode_landing_rows(rows)


@settings(SETTINGS, max_examples=80)
@given(hostile.LANDING_CHUNKS)
def test_the_arrow_decoder_decides_any_landing_chunk_as_the_landing_decoder_does(rows: list[Any]) -> None:
    hostile.compare_decoders(rows)


@settings(SETTINGS, max_examples=80)
@given(hostile.RECORD_SETS, st.booleans())
def test_per_element_and_columnar_give_equal_rows_and_dead_letters_on_any_records(
    batches: list[list[Any]], ascii_only: bool
) -> None:
    hostile.compare_on_records(batches, ascii_only)


@settings(SETTINGS, max_examples=60)
@given(hostile.MQTT_MESSAGES)
def test_any_mqtt_message_lands_and_decodes_on_the_streaming_path(messages: list[tuple[bytes, bytes]]) -> None:
    hostile.land_mqtt_messages(messages)


@settings(SETTINGS, max_examples=60)
@given(hostile.TOPICS, hostile.payloads())
def test_any_status_message_is_a_status_row_or_a_dead_letter(topic: str, payload: bytes) -> None:
    hostile.decode_status(topic, payload)
