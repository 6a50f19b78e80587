"""Hostile landing messages and the checks every decoder output must pass.

Shared by the property tests (``tests/test_hostile_decode.py``, a CI-sized
budget) and the fuzz target (``tests/fuzz/``, ``make fuzz``, a long one), so
both push the same inputs through the same checks.

The inputs are what a client can put on the wire: any bytes as a payload or
a topic, and JSON texts that ``json.loads`` reads into values the contract
never planned for — lone surrogates (``"\\ud800"``), integers beyond int64 and
past Python's 4300-digit conversion limit, NaN and Infinity, nesting near the
recursion limit, repeated keys, NUL, keys that are not identifiers — written
with or without ASCII escapes, gzip-compressed, cut short. Most are built
from a valid batch with a few changes, so they reach the record checks, not
only the envelope's.

The checks: every input is accounted for (its records are rows or dead
letters, or the message is one dead letter with a reason), every lake row
goes through the Beam coder of its PCollection and into the lake's Arrow
schema and Parquet, and every dead letter goes through its coder and is one
strict JSON line in UTF-8.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from dataclasses import dataclass
from datetime import date
from functools import cache
from typing import Any

import apache_beam as beam
import paho.mqtt.client as mqtt
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import strategies as st

from fleetpulse.mqtt_client import ClientOptions, new_client
from fleetpulse.pipeline.lake.landing import LandingWriter, iter_landing_rows
from fleetpulse.pipeline.lake.schema import lake_schema
from fleetpulse.pipeline.lake.storage import parquet_bytes, table_from_ipc, table_to_ipc
from fleetpulse.pipeline.outputs.tables import dead_letter_json
from fleetpulse.pipeline.sources.mqtt import MqttSourceConfig, ReaderSession
from fleetpulse.pipeline.transforms.arrow_decode import ArrowDecoder
from fleetpulse.pipeline.transforms.decode import Dead, LandingDecoder, dead_letter_row
from fleetpulse.pipeline.transforms.status import InvalidStatus, parse_status
from fleetpulse.schemas import REASONS, Rejection, Validator, dead_letter, load_contract

CONTRACT = load_contract()
VALIDATOR = Validator(CONTRACT)
T0 = 1_709_510_400_000  # 2024-03-04T00:00:00Z
RECEIVED = T0 + 600_000
IDS = {"customer_id": "c1", "site_id": "s1", "gateway_id": "g1"}
TOPIC = CONTRACT.topic("gateway_batches", **IDS)

HEARTBEAT = {"device_id": "d1", "ts_ms": T0 + 1000, "boot": 1, "seq": 0, "kind": "heartbeat",
             "fw": "2.4.1", "interval_s": 60, "uptime_s": 5}
USAGE = {"device_id": "d1", "ts_ms": T0 + 2000, "boot": 1, "seq": 1, "kind": "usage", "fw": "2.4.1",
         "period_s": 60, "quantities": [{"name": "runtime", "value": 42, "unit": "s"},
                                        {"name": "energy", "value": 0.25, "unit": "kWh"}]}
FEATURE = {"device_id": "d2", "ts_ms": T0 + 3000, "boot": 2, "seq": 5, "kind": "feature", "fw": "1.0",
           "feature": "scan", "count": 3}
ERROR = {"device_id": "d2", "ts_ms": T0 + 4000, "boot": 2, "seq": 6, "kind": "error", "fw": "1.0",
         "code": "E1", "severity": "critical", "message": "boom"}
TEMPLATES = (HEARTBEAT, USAGE, FEATURE, ERROR)
ENVELOPE = {"v": 1, **IDS, "batch_seq": 7, "sent_ms": RECEIVED}


# ------------------------------------------------------------------ JSON as written


@dataclass(frozen=True)
class Pairs:
    """A JSON object as written: a key may repeat (``json.loads`` keeps the last)."""

    items: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Digits:
    """An integer of ``count`` digits as written (``json.loads`` refuses more than 4300)."""

    count: int


@dataclass(frozen=True)
class Deep:
    """``value`` inside ``depth`` arrays (written flat: ``json.dumps`` would recurse)."""

    depth: int
    value: Any


def dumps(value: Any, *, ascii_only: bool = True) -> str:
    """JSON text of ``value``: dicts, lists, :class:`Pairs`, :class:`Deep`, :class:`Digits`, scalars (NaN as NaN)."""
    if isinstance(value, Deep):
        return "[" * value.depth + dumps(value.value, ascii_only=ascii_only) + "]" * value.depth
    if isinstance(value, Pairs | dict):
        items = value.items if isinstance(value, Pairs) else tuple(value.items())
        return "{" + ", ".join(
            f"{json.dumps(k, ensure_ascii=ascii_only)}: {dumps(v, ascii_only=ascii_only)}" for k, v in items
        ) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dumps(v, ascii_only=ascii_only) for v in value) + "]"
    if isinstance(value, Digits):
        return "9" * value.count
    return json.dumps(value, ensure_ascii=ascii_only)


def to_bytes(text: str) -> bytes:
    """UTF-8, with a lone surrogate written as its three bytes (invalid UTF-8, as a C client would)."""
    return text.encode("utf-8", "surrogatepass")


# -------------------------------------------------------------------- strategies

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=6)  # lone surrogates included
NAMES = sorted({*HEARTBEAT, *USAGE, *FEATURE, *ERROR, *ENVELOPE, "records", "v", "name", "value", "unit"})
KEYS = st.one_of(st.sampled_from(NAMES), ANY_TEXT)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**400, -(10**400)]),
    st.builds(Digits, st.integers(4290, 4310)),
    st.floats(),  # NaN and infinities included: Python's json writes and reads them
    ANY_TEXT,
    st.sampled_from(["", "\x00", "\ud800", "\udfff", "a\ud800b", "heartbeat", "usage", "s", "kWh", "d1",
                     "2.4.1", "2.4.1\n", "c1", "critical", "é", "\u2028", "\ufeff", "1"]),
)
#: JSON as written: objects with repeated keys, arrays nested up to past the recursion limit
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(KEYS, inner, max_size=4),
        st.builds(Pairs, st.lists(st.tuples(KEYS, inner), max_size=4).map(tuple)),
        st.builds(Deep, st.integers(1, 1200), inner),
    ),
    max_leaves=8,
)
#: Python values a source bug could hand over in place of a landing row or one of its fields
VALUES = st.recursive(
    st.one_of(SCALARS, st.binary(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=4,
)


@st.composite
def changed(draw: st.DrawFn, base: dict[str, Any], keys: list[str], most: int = 3) -> Any:
    """``base`` with up to ``most`` changes: a key removed, set to any JSON, repeated, or added."""
    items = list(base.items())
    for _ in range(draw(st.integers(0, most))):
        how = draw(st.sampled_from(["drop", "set", "repeat", "add"]))
        key = draw(st.sampled_from(keys)) if draw(st.integers(0, 4)) else draw(KEYS)
        if how == "drop":
            items = [(k, v) for k, v in items if k != key]
        elif how == "set":
            value = draw(JSON)
            items = [(k, value if k == key else v) for k, v in items]
            if key not in base:
                items.append((key, value))
        elif how == "repeat":  # the key twice: json.loads keeps the later one
            first = draw(st.booleans())
            pair = (key, draw(JSON))
            items = [pair, *items] if first else [*items, pair]
        else:
            items.append((draw(KEYS), draw(JSON)))
    return Pairs(tuple(items))


@st.composite
def records(draw: st.DrawFn) -> Any:
    """Mostly valid records, changed a little; sometimes any JSON at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    base = dict(draw(st.sampled_from(TEMPLATES)))
    base["seq"] = draw(st.integers(0, 30))
    if draw(st.booleans()):
        return base
    return draw(changed(base, [*base, "v", "count", "interval_s", "quantities", "message"]))


@st.composite
def batch_texts(draw: st.DrawFn) -> str:
    """The JSON text of a gateway batch: a valid envelope, its header maybe changed, hostile records."""
    recs = draw(st.lists(records(), max_size=6))
    envelope: Any = {**ENVELOPE, "records": recs}
    if draw(st.integers(0, 5)) == 0:
        envelope = draw(changed(envelope, list(envelope), most=2))
    return dumps(envelope, ascii_only=draw(st.booleans()))


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """Any bytes, or a (hostile) batch: raw UTF-8, gzip-compressed, cut short or padded."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.one_of(st.binary(max_size=64), st.sampled_from([
            b"", b"\x00", b"\xff\xfe", b"\xef\xbb\xbf{}", b"[" * 100_000, b"\x1f\x8b", b"null", b"NaN",
            gzip.compress(b"[" * 400_000), gzip.compress(b"{}") + b"x",
        ])))
    payload = to_bytes(draw(batch_texts()))
    how = draw(st.integers(0, 9))
    if how == 0:
        payload = gzip.compress(payload)
    elif how == 1:
        payload = payload[: draw(st.integers(0, len(payload)))]
    elif how == 2:
        payload = draw(st.sampled_from([b" ", b"\n", b"\xef\xbb\xbf"])) + payload + b"\n"
    return payload


OTHER_TOPIC = CONTRACT.topic("gateway_batches", customer_id="c2", site_id="s1", gateway_id="g1")


def mostly(usual: Any, *others: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` four times in five, else one of ``others``."""
    return st.integers(0, 4).flatmap(lambda n: st.just(usual) if n else st.one_of(*others))


TOPICS = mostly(TOPIC, st.just(OTHER_TOPIC), ANY_TEXT,
                st.binary(max_size=80).map(lambda b: b.decode("utf-8", "surrogateescape")))
RECEIVED_TIMES = mostly(RECEIVED, st.integers(RECEIVED - 10**9, RECEIVED + 10**9),
                        st.sampled_from([0, -1, 2**63 - 1, -(2**63)]))


@st.composite
def landing_rows(draw: st.DrawFn) -> Any:
    """What a landing source could hand the decoder: mostly proper rows, sometimes anything."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.one_of(VALUES, st.dictionaries(st.sampled_from(["topic", "payload", "received_ms"]), VALUES)))
    row: dict[str, Any] = {"topic": draw(TOPICS), "payload": draw(payloads()), "received_ms": draw(RECEIVED_TIMES)}
    if draw(st.integers(0, 19)) == 0:
        row[draw(st.sampled_from(sorted(row)))] = draw(st.one_of(VALUES, st.integers(), st.text().map(str)))
    return row


# ------------------------------------------------------------------------ checks


@cache
def coders() -> dict[str, beam.coders.Coder]:
    """The coder of every PCollection a decoder output travels in, as Beam picks it."""
    from fleetpulse.pipeline.sources.lake import ReadLanding
    from fleetpulse.pipeline.sources.mqtt import ReadFromMqtt
    from fleetpulse.pipeline.transforms import DEAD_LETTERS, DecodeBatches
    from fleetpulse.pipeline.transforms.columnar import DecodeBatchTables
    from fleetpulse.pipeline.transforms.status import DEAD_LETTERS as STATUS_DEAD_LETTERS
    from fleetpulse.pipeline.transforms.status import DecodeGatewayStatus

    p = beam.Pipeline()
    streamed = p | "Mqtt" >> ReadFromMqtt()
    landed = p | "Landing" >> ReadLanding("/nonexistent-lake", since=date(2000, 1, 1))
    rows = streamed | "Rows" >> DecodeBatches()
    tables = p | beam.Create([pa.table({"x": [1]})]) | "Tables" >> DecodeBatchTables()
    status = landed | "Status" >> DecodeGatewayStatus()
    collections = {
        "mqtt": streamed, "landing": landed, "rows": rows.main, "dead": rows[DEAD_LETTERS],
        "tables": tables.main, "table_dead": tables[DEAD_LETTERS], "status_dead": status[STATUS_DEAD_LETTERS],
    }
    return {name: beam.coders.registry.get_coder(pc.element_type) for name, pc in collections.items()}


def through(coder: beam.coders.Coder, value: Any) -> Any:
    """``value`` encoded and decoded by ``coder`` (nested and outer contexts, as runners use both)."""
    impl = coder.get_impl()
    nested = impl.decode_nested(impl.encode_nested(value))
    outer = coder.decode(coder.encode(value))
    assert type(nested) is type(outer)
    return outer


def strict_json(line: str) -> Any:
    """``json.loads`` that refuses what JSON has no word for (NaN, Infinity)."""
    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    return json.loads(line, parse_constant=refuse)


def check_dead_letter(row: dict[str, Any], coder: str = "dead") -> None:
    """A dead-letter row: a bounded reason, a detail, through its coder, one strict JSON line in UTF-8."""
    assert row["reason"] in REASONS, row["reason"]
    assert isinstance(row["detail"], str) and row["detail"]
    assert through(coders()[coder], row) == row
    line = dead_letter_json(row)
    assert "\n" not in line
    assert strict_json(line.encode("utf-8").decode("utf-8")) == json.loads(json.dumps(row))


def check_rows(rows: list[dict[str, Any]]) -> pa.Table:
    """Lake rows: through the rows' coder, into the lake schema, Arrow IPC and Parquet."""
    for row in rows:
        assert through(coders()["rows"], row) == row
    return check_table(pa.Table.from_pylist(rows, schema=lake_schema()))


def check_table(table: pa.Table) -> pa.Table:
    """A lake table: the lake schema, through the tables' coder, Arrow IPC and Parquet."""
    assert table.schema.equals(lake_schema(), check_metadata=False)
    assert through(coders()["tables"], table).equals(table)
    assert table_from_ipc(table_to_ipc(table)).equals(table)
    assert parquet_bytes(table)
    return table


def parsed_records(payload: Any) -> int | None:
    """How many records a payload's envelope holds, or None when it is not a batch with a records list."""
    if not isinstance(payload, bytes):
        return None
    if payload[:2] == b"\x1f\x8b":
        try:
            payload = gzip.decompress(payload)
        except (OSError, EOFError):
            return None
    try:
        obj = json.loads(payload, parse_int=len)  # only the shape counts (and no digit limit)
    except (ValueError, RecursionError):
        return None
    return len(obj["records"]) if isinstance(obj, dict) and isinstance(obj.get("records"), list) else None


def check_accounted(payload: Any, rows: list[dict[str, Any]], dead: list[Dead]) -> None:
    """Every record of one message is a row or a dead letter, or the message is one dead letter."""
    whole = [d for d in dead if d[0].index is None]
    if whole:
        assert len(dead) == 1 and not rows, [d[0] for d in dead]
        return
    indices = [d[0].index for d in dead]
    assert len(set(indices)) == len(indices)
    count = parsed_records(payload)
    assert count is not None, "records were decided, so the message was a batch"
    assert len(rows) + len(dead) == count
    assert all(0 <= i < count for i in indices if i is not None)


def check_dead(dead: list[Dead], coder: str = "dead") -> list[dict[str, Any]]:
    letters = [dead_letter_row(d) for d in dead]
    for letter in letters:
        check_dead_letter(letter, coder)
    return letters


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


# -------------------------------------------------------------------- properties
# Each takes what its strategy draws and raises on a fault: the property tests run them with a
# CI budget, the fuzz target (tests/fuzz) with minutes.

LANDING_CHUNKS = st.lists(landing_rows(), min_size=1, max_size=6)
RECORD_SETS = st.lists(st.lists(records(), max_size=8), min_size=1, max_size=4)
TOPIC_BYTES = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda ids: b"fleetpulse/v1/customers/%b/sites/s1/gateways/g1/batches" % ids, st.binary(max_size=6)),
    st.just(TOPIC.encode()),
)
MQTT_MESSAGES = st.lists(st.tuples(TOPIC_BYTES, payloads()), min_size=1, max_size=4)


def _reference(rows: list[Any]) -> tuple[list[dict[str, Any]], list[Dead]]:
    decoder = LandingDecoder()
    got: list[dict[str, Any]] = []
    dead: list[Dead] = []
    for landing in rows:
        one, refused = decoder.decode(landing)
        got += one
        dead += refused
    return got, dead


def decode_landing_rows(rows: list[Any]) -> None:
    """Per element: every row's records are lake rows or dead letters, each through every encoder."""
    decoder = LandingDecoder()
    for landing in rows:
        got, dead = decoder.decode(landing)
        check_rows(got)
        check_dead(dead)
        payload = landing.get("payload") if isinstance(landing, dict) else None
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "surrogatepass")
        check_accounted(payload, got, dead)


def compare_decoders(rows: list[Any]) -> None:
    """Columnar: a chunk of landing rows gives the per-element decoder's rows and dead letters."""
    columns = [[r.get(k) if isinstance(r, dict) else None for r in rows] for k in ("topic", "payload", "received_ms")]
    decoded = ArrowDecoder().decode(*columns)
    check_table(decoded.table)
    letters = check_dead(decoded.dead, "table_dead")
    expected_rows, expected_dead = _reference(
        [{"topic": t, "payload": p, "received_ms": r} for t, p, r in zip(*columns, strict=True)])
    assert sorted(map(canonical, decoded.table.to_pylist())) == sorted(map(canonical, expected_rows))
    assert sorted(map(canonical, letters)) == sorted(canonical(dead_letter_row(d)) for d in expected_dead)


def compare_on_records(batches: list[list[Any]], ascii_only: bool) -> None:
    """Valid envelopes on their own topic, any records: both decoders agree on rows, reasons and details."""
    payloads = [to_bytes(dumps({**ENVELOPE, "records": recs}, ascii_only=ascii_only)) for recs in batches]
    landing = [{"topic": TOPIC, "payload": p, "received_ms": RECEIVED + i} for i, p in enumerate(payloads)]
    for row in landing:
        check_accounted(row["payload"], *LandingDecoder().decode(row))
    compare_decoders(landing)


def paho_message(topic: bytes, payload: bytes, mid: int = 1) -> mqtt.MQTTMessage:
    """A message as paho's network thread builds it from a PUBLISH packet."""
    message = mqtt.MQTTMessage(mid, topic)
    message.payload, message.qos = payload, 1
    return message


class Reader:
    """A ReaderSession with a real (unconnected) paho client, fed messages as its network thread would."""

    def __init__(self) -> None:
        self.clients: list[mqtt.Client] = []

        def factory(options: ClientOptions) -> mqtt.Client:
            self.clients.append(new_client(options))
            return self.clients[-1]

        self.session = ReaderSession(MqttSourceConfig(), 0, client_factory=factory, clock_ms=lambda: RECEIVED)
        self.acked: list[int] = []
        self.clients[0].ack = lambda mid, qos: self.acked.append(mid)  # unconnected: nothing to send

    def deliver(self, message: mqtt.MQTTMessage) -> Any:
        client = self.clients[0]
        client.on_message(client, None, message)
        return self.session.poll(0)


def land_mqtt_messages(messages: list[tuple[bytes, bytes]]) -> None:
    """Streaming: broker message → landing row (the source's coder) → landing file → both decoders."""
    reader = Reader()
    rows = []
    for mid, (topic, payload) in enumerate(messages, start=1):
        delivery = reader.deliver(paho_message(topic, payload, mid))
        if delivery is None:  # outside the subscription: acknowledged and counted, not landed
            assert reader.acked[-1] == mid
            continue
        # The row _ReadMqttFn emits, through the coder of the source's PCollection.
        row = {"topic": delivery.topic, "payload": delivery.payload, "received_ms": delivery.received_ms}
        assert through(coders()["mqtt"], row) == row
        rows.append(row)
    assert reader.session.counters["received"] + reader.session.counters["unmatched"] == len(messages)
    if not rows:
        return
    with tempfile.TemporaryDirectory() as lake:
        writer = LandingWriter(lake)
        for row in rows:
            writer.add(row["topic"], row["payload"], row["received_ms"])
        path = writer.commit()
        assert path is not None
        landed = list(iter_landing_rows(path))
        table = pq.read_table(path)
    assert landed == rows
    decode_landing_rows(landed)
    decoded = ArrowDecoder().decode(*(table[name].to_pylist() for name in ("topic", "payload", "received_ms")))
    check_table(decoded.table)
    check_dead(decoded.dead, "table_dead")


def decode_status(topic: str, payload: bytes) -> None:
    """The status zone's decoder (DecodeGatewayStatus's step): a row or a dead letter, never a crash."""
    try:
        parse_status(topic, payload, RECEIVED)
    except InvalidStatus as exc:
        letter = dead_letter(Rejection(exc.reason, exc.detail), source="pipeline:status", topic=topic,
                             at_ms=RECEIVED, payload=payload)
        check_dead_letter(letter, "status_dead")


def validate_as_the_gateway_does(payload: bytes, device_id: str | None) -> None:
    """The shared Validator on a device message, and the gateway's dead letters (a sample on its SD card)."""
    valid, rejected = VALIDATOR.device_payload(payload, now_ms=RECEIVED, device_id=device_id)
    for record in valid:
        assert through(coders()["rows"], record) == record
    for rejection in rejected:
        assert rejection.reason in REASONS
        for sample in (None, 64):
            row = dead_letter(rejection, source="gateway:g1", topic="t", at_ms=RECEIVED, payload=payload,
                              sample_bytes=sample)
            check_dead_letter(row)
