"""Hostile device input at the gateway: every message acknowledged, no device speaking for another, bounded dead letters.

Unit tests run the collector on fake MQTT clients (deterministic, and able to
make the collector's own parts fail); the integration tests publish to a real
local Mosquitto at QoS 1 and restart the collector on the same session, which
is where a message that was never acknowledged would come back.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fleetpulse.devices.collector import intake as collector_module  # where dead letters are built
from fleetpulse.devices.collector.collector import INTERNAL_ERROR, Collector
from fleetpulse.devices.collector.config import CollectorConfig, load_config
from fleetpulse.errors import ConfigError

from .servers import Server, wait_until
from .test_collector_integration import Central, Devices, key, now_ms
from .test_collector_support import FakeClock, FakeFactory, record, write_config

TOPIC = "fleetpulse/v1/devices/{}/telemetry"


def hostile_config(tmp_path: Path, *, dead_letters: str = "", max_records: int = 1, **kwargs: Any) -> CollectorConfig:
    """A collector config; ``dead_letters`` is appended to its [dead_letters] section (the file's last)."""
    batch = f"max_records = {max_records}\nmax_interval_ms = 50\nmax_inflight_batches = 8\n"
    path = write_config(tmp_path, batch=batch, **kwargs)
    path.write_text(path.read_text() + dead_letters)
    return load_config(path, environ={})


def dead_rows(config: CollectorConfig) -> list[dict[str, Any]]:
    """Every dead-letter row, oldest first (rotated files by number, then the active file)."""
    path = config.dead_letters.path
    rotated = sorted(path.parent.glob(f"{path.stem}.*{path.suffix}"), key=lambda p: int(p.name.split(".")[1]))
    files = [*rotated, path] if path.exists() else rotated
    # strict UTF-8 and one JSON object per line, whatever the devices sent
    return [json.loads(line) for f in files for line in f.read_bytes().decode("utf-8").splitlines()]


def sent(factory: FakeFactory) -> list[tuple[str, int, int]]:
    return [key(r) for p in factory.upstream.topics("/batches") for r in json.loads(p.payload)["records"]]


def start(config: CollectorConfig, clock: FakeClock | None = None) -> tuple[Collector, FakeFactory]:
    factory = FakeFactory()
    collector = Collector(config, client_factory=factory, clock=clock or FakeClock())
    collector.start()
    return collector, factory


def body(*records: dict[str, Any]) -> bytes:
    return json.dumps(records[0] if len(records) == 1 else list(records)).encode()


# ------------------------------------------------------------ item 2: always acknowledged
def test_a_message_the_validator_chokes_on_is_dead_lettered_and_acknowledged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = hostile_config(tmp_path)
    collector, factory = start(config)
    poison = body(record(seq=1)) + b" "
    real = collector._validator.device_payload

    def choking(payload: bytes, **kwargs: Any) -> Any:
        if payload == poison:
            raise TypeError("unhashable type: 'list'")  # what a unit given as a list once did
        return real(payload, **kwargs)

    monkeypatch.setattr(collector._validator, "device_payload", choking)
    factory.local.deliver(TOPIC.format("dev-001"), body(record(seq=0)), mid=1)
    factory.local.deliver(TOPIC.format("dev-001"), poison, mid=2)
    factory.local.deliver(TOPIC.format("dev-001"), body(record(seq=2)), mid=3)
    assert collector.wait_idle(timeout_s=5), "a message was left unsettled"
    assert sorted(factory.local.acks) == [(1, 1), (2, 1), (3, 1)]
    assert sent(factory) == [("dev-001", 1, 0), ("dev-001", 1, 2)]
    (row,) = dead_rows(config)
    assert row["reason"] == INTERNAL_ERROR and "TypeError" in row["detail"]
    assert row["payload"] == poison.decode() and row["topic"] == TOPIC.format("dev-001")
    counters = collector.counters
    assert counters["dropped_records"] == {INTERNAL_ERROR: 1} and counters["errors"] == 1
    assert counters["dead_letters"] == 1 and counters["received_records"] == 3
    assert collector.stop(timeout_s=1)


def test_a_dead_letter_that_cannot_be_built_still_keeps_a_row_and_acknowledges(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = hostile_config(tmp_path)
    collector, factory = start(config)
    real = collector_module.dead_letter
    calls = []

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return real(*args, **kwargs)

    monkeypatch.setattr(collector_module, "dead_letter", failing_once)
    factory.local.deliver(TOPIC.format("dev-001"), b"{not json", mid=7)
    assert collector.wait_idle(timeout_s=5)
    assert factory.local.acks == [(7, 1)]
    (row,) = dead_rows(config)
    assert row["reason"] == "not_json" and "UnicodeEncodeError" in row["detail"]
    assert row["payload"] == "{not json"
    assert collector.counters["errors"] == 1 and collector.counters["dead_letters"] == 1
    assert collector.stop(timeout_s=1)


def test_a_failing_dead_letter_disk_drops_and_counts_but_never_holds_intake_up(tmp_path: Path) -> None:
    dead = tmp_path / "dl" / "dead-letters.jsonl"
    dead.parent.mkdir()
    dead.symlink_to("/dev/full")  # every write fails with ENOSPC
    config = load_config(write_config(tmp_path, dead_letters=str(dead), batch="max_records = 1\n",
                                      status_interval_s=1), environ={})
    clock = FakeClock()
    collector, factory = start(config, clock)
    for mid in range(1, 7):
        payload = body(record(seq=mid)) if mid % 2 else b"garbage %d" % mid
        factory.local.deliver(TOPIC.format("dev-001"), payload, mid=mid)
    assert collector.wait_idle(timeout_s=5)
    assert sorted(factory.local.acks) == [(mid, 1) for mid in range(1, 7)]
    assert sent(factory) == [("dev-001", 1, 1), ("dev-001", 1, 3), ("dev-001", 1, 5)]
    counters = collector.counters
    assert counters["dead_letters"] == 0 and counters["dead_letters_dropped"] == 3
    assert counters["dropped_records"] == {"not_json": 3} and counters["errors"] >= 1
    clock.advance(1000)
    assert collector.tick()
    status = json.loads(factory.upstream.topics("/status")[-1].payload)
    assert status["counters"]["dead_letters_dropped"] == 3
    assert collector.stop(timeout_s=1)


# ------------------------------------------------------------------- item 3: spoofing
def test_a_record_naming_another_device_is_device_mismatch_and_not_forwarded(tmp_path: Path) -> None:
    config = hostile_config(tmp_path)
    collector, factory = start(config)
    other_customer = record("c-0002-dev-9", seq=1)
    factory.local.deliver(TOPIC.format("dev-001"), body(record(seq=0), other_customer, record(seq=2)), mid=1)
    factory.local.deliver(TOPIC.format("dev-001"), body(record("dev-002", seq=3)), mid=2)
    assert collector.wait_idle(timeout_s=5)
    assert sent(factory) == [("dev-001", 1, 0), ("dev-001", 1, 2)]
    assert sorted(factory.local.acks) == [(1, 1), (2, 1)]
    rows = dead_rows(config)
    assert [(r["reason"], r["index"], r["record"]["device_id"]) for r in rows] == [
        ("device_mismatch", 1, "c-0002-dev-9"), ("device_mismatch", 0, "dev-002")]
    assert collector.counters["dropped_records"] == {"device_mismatch": 2}
    assert collector.stop(timeout_s=1)


def test_a_topic_that_names_no_valid_device_is_refused_whole(tmp_path: Path) -> None:
    config = hostile_config(tmp_path, topic_prefix="sim/c-0001-gw1/")
    collector, factory = start(config)
    prefix = "sim/c-0001-gw1/"
    huge = "d" * 70_000
    topics = [
        prefix + TOPIC.format("dev 001!"),  # not an identifier
        prefix + TOPIC.format(huge),  # longer than any identifier, and than a dead letter should hold
        TOPIC.format("dev-001"),  # without the gateway's prefix
        prefix + "fleetpulse/v1/devices/dev-001/extra/telemetry",
    ]
    for mid, topic in enumerate(topics, 1):
        factory.local.deliver(topic, body(record(seq=mid)), mid=mid)
    factory.local.deliver(prefix + TOPIC.format("dev-001"), body(record(seq=9)), mid=9)
    assert collector.wait_idle(timeout_s=5)
    assert sent(factory) == [("dev-001", 1, 9)]
    assert sorted(factory.local.acks) == [(mid, 1) for mid in (1, 2, 3, 4, 9)]
    rows = dead_rows(config)
    assert [r["reason"] for r in rows] == ["topic_mismatch"] * 4
    assert all(r["index"] is None and r["payload"] for r in rows)
    assert len(rows[1]["topic"]) < 1000 and rows[1]["topic"].endswith("...")
    assert collector.counters["dropped_records"] == {"topic_mismatch": 4}
    assert collector.stop(timeout_s=1)


# ----------------------------------------------------------- item 5: bounded dead letters
def hostile_payload(n: int) -> tuple[str, bytes]:
    """The n-th of a stream of hostile messages, each refused with exactly one dead letter."""
    pad = "x" * 2000  # ~2 KB each: 10,000 of them would be ~20 MB unbounded
    variant = n % 5
    if variant == 0:
        return "not_json", b'{"n": %d, "pad": "%s"' % (n, pad.encode())
    if variant == 1:
        return "not_utf8", b"\xff\xfe %d " % n + pad.encode()
    if variant == 2:
        return "device_mismatch", body(record("c-0002-dev-9", seq=n, pad=pad))
    if variant == 3:
        return "not_utf8", body(record(seq=n, kind="error", message="\ud800", pad=pad))
    return "missing_field", body({k: v for k, v in record(seq=n, pad=pad).items() if k != "boot"})


def test_ten_thousand_hostile_messages_stay_within_the_quota_keeping_the_newest(tmp_path: Path) -> None:
    config = hostile_config(tmp_path, dead_letters=(
        "quota_bytes = 262144\nmax_file_bytes = 32768\nsample_bytes = 256\n"))
    clock = FakeClock()
    collector, factory = start(config, clock)
    # Durability is not what this test is about: spare the machine 10,000 fsyncs.
    collector.spool.fsync = collector.dead_letters.fsync = False
    reasons: Counter[str] = Counter()
    mid = 0
    for n in range(10_000):
        reason, payload = hostile_payload(n)
        reasons[reason] += 1
        mid += 1
        factory.local.deliver(TOPIC.format("dev-001"), payload, mid=mid)
        if n % 100 == 0:  # good traffic keeps flowing through the flood
            mid += 1
            factory.local.deliver(TOPIC.format("dev-001"), body(record(seq=n)), mid=mid)
    assert collector.wait_idle(timeout_s=120)
    assert len(factory.local.acks) == mid == 10_100

    files = [p for p in config.dead_letters.path.parent.iterdir()]
    assert sum(p.stat().st_size for p in files) <= 262_144
    assert all(p.stat().st_size <= 32_768 for p in files) and len(files) >= 6
    rows = dead_rows(config)
    # Rows are in arrival order and are the newest: the last rows written, none missing between.
    assert [r["reason"] for r in rows] == [hostile_payload(n)[0] for n in range(10_000 - len(rows), 10_000)]
    assert all((r["payload"] is None or len(r["payload"].encode()) <= 344) for r in rows)  # 256 B, or base64
    assert all(r["truncated"] for r in rows)  # every sample was cut to 256 bytes

    counters = collector.counters
    assert counters["received_messages"] == 10_100
    assert counters["received_records"] == counters["spooled_records"] + sum(counters["dropped_records"].values())
    assert counters["dropped_records"] == dict(reasons)
    assert counters["spooled_records"] == counters["sent_records"] == 100
    assert counters["dead_letters"] == 10_000
    assert counters["dead_letters_dropped"] == 10_000 - len(rows)
    clock.advance(config.status.interval_s * 1000)
    assert collector.tick()
    status = json.loads(factory.upstream.topics("/status")[-1].payload)
    assert status["counters"]["dead_letters_dropped"] == 10_000 - len(rows)
    assert collector.stop(timeout_s=1)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("quota_bytes = 1000\n", "dead_letters.quota_bytes"),
        ("max_file_bytes = 1000\n", "dead_letters.max_file_bytes"),
        ("quota_bytes = 65536\nmax_file_bytes = 65536\n", "dead_letters.max_file_bytes"),
        ("sample_bytes = -1\n", "dead_letters.sample_bytes"),
        ("max_file_bytes = 16384\nsample_bytes = 4096\n", "dead_letters.sample_bytes"),
        ('sample_bytes = "1k"\n', "dead_letters.sample_bytes"),
    ],
)
def test_bad_dead_letter_settings_name_file_key_and_fix(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        hostile_config(tmp_path, dead_letters=extra)
    assert info.value.key == key and "fix:" in str(info.value) and str(tmp_path) in str(info.value)


def test_dead_letter_defaults_suit_an_sd_card_and_stay_out_of_the_spool(tmp_path: Path) -> None:
    dead = hostile_config(tmp_path).dead_letters
    assert (dead.quota_bytes, dead.max_file_bytes, dead.sample_bytes) == (16 << 20, 2 << 20, 1024)
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, dead_letters="spool/c-0001-gw1/dl.jsonl"), environ={})
    assert info.value.key == "dead_letters.path" and "spool" in str(info.value)
    env = {"FLEETPULSE_GATEWAY__DEAD_LETTERS__SAMPLE_BYTES": "64"}
    assert load_config(write_config(tmp_path), environ=env).dead_letters.sample_bytes == 64


# ------------------------------------------------------------ on real Mosquitto
def hostile_traffic() -> tuple[list[tuple[str, bytes]], Counter[str]]:
    """(device, payload) messages for the real broker, and the dead-letter reasons they must give."""
    base = now_ms() - 60_000
    out: list[tuple[str, bytes]] = []
    reasons: Counter[str] = Counter()

    def bad(device: str, payload: bytes, reason: str) -> None:
        out.append((device, payload))
        reasons[reason] += 1

    lone = record("dev-1", 100, kind="error", ts_ms=base, message="\ud800")  # json.dumps writes "\ud800"
    bad("dev-1", json.dumps(lone).encode(), "not_utf8")
    no_seq = {k: v for k, v in record("dev-1", 101, ts_ms=base).items() if k != "seq"} | {"\udfff": 1}
    bad("dev-1", json.dumps(no_seq).encode(), "missing_field")
    bad("dev-1", json.dumps(record("\ud800", 102, ts_ms=base)).encode(), "bad_identifier")
    # An integer past Python's 4300-digit limit is read as the infinity it exceeds: not an integer.
    huge = json.dumps(record("dev-1", 106, ts_ms=base)).replace('"seq": 106', '"seq": ' + "9" * 5000)
    bad("dev-1", huge.encode(), "wrong_type")
    bad("dev-1", b"[" * 100_000, "not_json")  # deeper than the parser goes
    bad("dev-1", b"\xff\xfe\x00 binary", "not_utf8")
    bad("dev-1", json.dumps(record("dev-1", 103, ts_ms=base) | {"ts_ms": float("nan")}).encode(), "wrong_type")
    bad("dev-1", json.dumps([record("dev-1", i, ts_ms=base) for i in range(2500)]).encode(), "payload_too_large")
    bad("dev-1", json.dumps(record("c-0002-dev-7", 104, ts_ms=base)).encode(), "device_mismatch")
    bad("dev 1!", json.dumps(record("dev-1", 105, ts_ms=base)).encode(), "topic_mismatch")
    return out, reasons


@pytest.mark.integration
def test_hostile_messages_are_acknowledged_once_dead_lettered_and_never_redelivered(
        tmp_path: Path, mosquitto_pair: tuple[Server, Server]) -> None:
    local, central_broker = mosquitto_pair
    central, devices = Central(central_broker.port), Devices(local.port)
    base = now_ms() - 60_000
    config = hostile_config(tmp_path, max_records=100, local_port=local.port, upstream_port=central_broker.port,
                            dead_letters="sample_bytes = 512\n")
    hostile, reasons = hostile_traffic()
    before = [("dev-1", json.dumps(record("dev-1", s, ts_ms=base)).encode()) for s in range(5)]
    after = [("dev-1", json.dumps(record("dev-1", s, ts_ms=base)).encode()) for s in range(5, 10)]
    collector = Collector(config)
    collector.start()
    try:
        devices.publish_all(before + hostile + after)
        wait_until(lambda: collector.counters["received_messages"] == len(before + hostile + after), 30,
                   "every message at the collector")
        assert collector.wait_idle(timeout_s=30), "a hostile message was never settled"
        wait_until(lambda: len(central.records()) >= 10, 20, "the good records upstream")
        assert sorted(key(r) for r in central.records()) == [("dev-1", 1, s) for s in range(10)]
        counters = collector.counters
        assert counters["dropped_records"] == dict(reasons)
        assert counters["dead_letters"] == sum(reasons.values()) and counters["dead_letters_dropped"] == 0
    finally:
        assert collector.stop(timeout_s=10)
    rows = dead_rows(config)
    assert Counter(r["reason"] for r in rows) == reasons
    assert all(r["payload"] is None or len(r["payload"]) <= 4 * 512 for r in rows)
    assert {r["payload_bytes"] for r in rows if r["reason"] == "payload_too_large"} == {len(hostile[7][1])}

    # The same session again: the local broker has nothing left to redeliver.
    again = Collector(config)
    again.start()
    try:
        devices.publish_all([("dev-1", json.dumps(record("dev-1", 10, ts_ms=base)).encode())])
        wait_until(lambda: ("dev-1", 1, 10) in {key(r) for r in central.records()}, 20, "the marker upstream")
        assert again.wait_idle(timeout_s=10)
        assert again.counters["received_messages"] == 1, "a message came back after the restart"
    finally:
        assert again.stop(timeout_s=10)
        devices.close()
        central.close()
    assert len(dead_rows(config)) == len(rows)


@pytest.mark.integration
def test_a_spoofed_record_is_not_forwarded_and_the_status_counts_it(
        tmp_path: Path, mosquitto_pair: tuple[Server, Server]) -> None:
    local, central_broker = mosquitto_pair
    central, devices = Central(central_broker.port), Devices(local.port)
    base = now_ms() - 60_000
    config = hostile_config(tmp_path, max_records=100, local_port=local.port, upstream_port=central_broker.port,
                            status_interval_s=1)
    collector = Collector(config)
    collector.start()
    try:
        devices.publish_all([
            ("dev-1", json.dumps([record("dev-1", 0, ts_ms=base), record("c-0002-dev-7", 0, ts_ms=base),
                                  record("dev-1", 1, ts_ms=base)]).encode()),
            ("dev-2", json.dumps(record("dev-1", 2, ts_ms=base)).encode()),  # dev-2 speaking for dev-1
        ])
        assert collector.wait_idle(timeout_s=20)
        wait_until(lambda: len(central.records()) >= 2, 20, "dev-1's own records upstream")

        def counted() -> bool:
            status = (central.last_status() or {}).get("counters", {})
            return status.get("dropped_records", {}).get("device_mismatch") == 2
        wait_until(counted, 20, "a status message counting both as device_mismatch")
        assert sorted(key(r) for r in central.records()) == [("dev-1", 1, 0), ("dev-1", 1, 1)]
        status = central.last_status() or {}
        assert status["counters"]["dead_letters"] == 2 and status["counters"]["dead_letters_dropped"] == 0
    finally:
        assert collector.stop(timeout_s=10)
        devices.close()
        central.close()
    assert [(r["reason"], r["record"]["device_id"], r["topic"]) for r in dead_rows(config)] == [
        ("device_mismatch", "c-0002-dev-7", TOPIC.format("dev-1")),
        ("device_mismatch", "dev-1", TOPIC.format("dev-2")),
    ]


# ------------------------------------------------------------ issue 12 item 7, end to end
@pytest.mark.integration
def test_strays_in_the_spool_directory_are_moved_aside_counted_and_the_records_flow(
        tmp_path: Path, mosquitto_pair: tuple[Server, Server]) -> None:
    local, central_broker = mosquitto_pair
    central, devices = Central(central_broker.port), Devices(local.port)
    base = now_ms() - 60_000
    config = hostile_config(tmp_path, max_records=100, local_port=local.port, upstream_port=central_broker.port,
                            status_interval_s=1)
    spool = Path(config.spool.path)
    spool.mkdir(parents=True, exist_ok=True)
    # What the harness left there: an index no spool writes, a directory named like a segment.
    (spool / "99999999999999999999.seg").write_bytes(b"\0" * 64)
    (spool / "00000000000000000007.seg").mkdir()
    collector = Collector(config)
    collector.start()
    try:
        devices.publish_all([("dev-1", json.dumps(record("dev-1", seq, ts_ms=base)).encode())
                             for seq in range(300)])
        wait_until(lambda: len(central.records()) == 300, 30, "every record upstream")

        def counted() -> bool:
            return (central.last_status() or {}).get("counters", {}).get("spool_quarantined_files") == 2
        wait_until(counted, 20, "a status message counting both strays")
    finally:
        assert collector.stop(timeout_s=10)
        devices.close()
        central.close()
    assert not (spool / "99999999999999999999.seg").exists()
    assert not (spool / "00000000000000000007.seg").exists()
    assert sorted(key(r) for r in central.records()) == [("dev-1", 1, seq) for seq in range(300)]
