"""Gateway collector against two real Mosquitto brokers (the gateway's local one and the central one).

Devices publish to the local broker; a subscriber on the central broker
checks what arrives: every valid record exactly once and correctly stamped,
every malformed one in the dead-letter file with its reason, the status topic,
and that stop() drains.
"""

from __future__ import annotations

import gzip
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from fleetpulse.devices.collector.collector import Collector
from fleetpulse.devices.collector.config import CollectorConfig, load_config
from fleetpulse.schemas import Validator, load_contract

from .servers import Server, free_port, wait_until
from .test_collector_support import record, write_config

pytestmark = pytest.mark.integration

CONTRACT = load_contract()
IDS = {"customer_id": "c-0001", "site_id": "c-0001-s1", "gateway_id": "c-0001-gw1"}
BATCH_TOPIC = CONTRACT.topic("gateway_batches", **IDS)
STATUS_TOPIC = CONTRACT.topic("gateway_status", **IDS)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Central:
    """A subscriber on the central broker that keeps every batch and status message."""

    def __init__(self, port: int, client_id: str = "test-central", *, persistent: bool = False) -> None:
        self.lock = threading.Lock()
        self.batches: list[bytes] = []
        self.statuses: list[tuple[dict[str, Any], bool]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not persistent)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(BATCH_TOPIC, 1), (STATUS_TOPIC, 1)])
        self.client.loop_start()
        assert self._subscribed.wait(10), "central subscriber not subscribed"

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            if message.topic == BATCH_TOPIC:
                self.batches.append(bytes(message.payload))
            else:
                self.statuses.append((json.loads(message.payload), bool(message.retain)))

    def records(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for payload in self.batches
                    for r in json.loads(gzip.decompress(payload) if payload[:2] == b"\x1f\x8b" else payload)["records"]]

    def last_status(self) -> dict[str, Any] | None:
        with self.lock:
            return self.statuses[-1][0] if self.statuses else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Devices:
    """Publishes device messages to the local broker with QoS 1 and waits for the broker's PUBACK."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-devices")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        infos = [self.client.publish(f"fleetpulse/v1/devices/{device}/telemetry", body, qos=1)
                 for device, body in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
            assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def brokers(mosquitto_pair: tuple[Server, Server]) -> Iterator[tuple[Server, Server, Central, Devices]]:
    local, central_broker = mosquitto_pair
    central = Central(central_broker.port)
    devices = Devices(local.port)
    yield local, central_broker, central, devices
    devices.close()
    central.close()


def config_for(tmp_path: Path, local: Server, central: Server, *, batch: str,
               status_interval_s: int = 60) -> CollectorConfig:
    path = write_config(tmp_path, local_port=local.port, upstream_port=central.port, batch=batch,
                        status_interval_s=status_interval_s)
    return load_config(path, environ={})


def key(r: dict[str, Any]) -> tuple[str, int, int]:
    return r["device_id"], r["boot"], r["seq"]


def build_traffic(seed: int = 7, n_valid: int = 2000) -> tuple[list[tuple[str, bytes]], set, Counter]:
    """Device messages (single records and arrays, 51 malformed (one oversize) mixed in), the valid keys, the reasons."""
    rng = random.Random(seed)
    base = now_ms() - 3_600_000
    seqs: Counter = Counter()
    kinds = ["heartbeat", "usage", "feature", "error"]

    def next_record(device: str) -> dict[str, Any]:
        seq = seqs[device]
        seqs[device] += 1
        return record(device, seq, kind=rng.choice(kinds), ts_ms=base + seq * 1000)

    messages: list[tuple[str, bytes]] = []
    expected: set = set()
    reasons: Counter = Counter()
    made = 0
    while made < n_valid:
        device = f"dev-{rng.randrange(40):03d}"
        size = 1 if rng.random() < 0.5 else rng.randint(2, 25)
        size = min(size, n_valid - made)
        records = [next_record(device) for _ in range(size)]
        expected.update(key(r) for r in records)
        body = records[0] if size == 1 and rng.random() < 0.8 else records
        messages.append((device, json.dumps(body).encode()))
        made += size

    bad: list[tuple[str, bytes]] = []
    for i in range(10):
        bad.append(("dev-900", b'{"device_id": "dev-900", "seq": ' + str(i).encode()))
        reasons["not_json"] += 1
    for _ in range(5):
        bad.append(("dev-901", b"\xff\xfe\x00garbage"))
        reasons["not_utf8"] += 1
    for _ in range(5):
        bad.append(("dev-902", b'"just a string"'))
        reasons["not_object"] += 1
    for i in range(10):
        r = record("dev-903", i)
        del r["seq"]
        bad.append(("dev-903", json.dumps(r).encode()))
        reasons["missing_field"] += 1
    for i in range(5):
        bad.append(("dev-904", json.dumps(record("bad id!", i)).encode()))
        reasons["bad_identifier"] += 1
    for i in range(5):
        bad.append(("dev-905", json.dumps(record("dev-905", i, kind="heartbeat") | {"kind": "teleport"}).encode()))
        reasons["unknown_kind"] += 1
    for i in range(5):
        bad.append(("dev-906", json.dumps(record("dev-906", i, ts_ms=now_ms() + 86_400_000)).encode()))
        reasons["event_time_in_future"] += 1
    for i in range(5):  # arrays with one bad record among good ones: the good ones go through
        good = [record("dev-907", 3 * i), record("dev-907", 3 * i + 1)]
        expected.update(key(r) for r in good)
        bad.append(("dev-907", json.dumps([good[0], record("dev-907", 3 * i + 2) | {"seq": "x"}, good[1]]).encode()))
        reasons["wrong_type"] += 1
    bad.append(("dev-908", json.dumps([record("dev-908", i) for i in range(2500)]).encode()))  # > 256 KiB
    reasons["payload_too_large"] += 1
    assert len(bad) == 51 and len(bad[-1][1]) > 262_144
    for item in bad:
        messages.insert(rng.randrange(len(messages) + 1), item)
    return messages, expected, reasons


def test_every_valid_record_arrives_once_stamped_and_every_bad_one_is_a_dead_letter(
        tmp_path: Path, brokers: tuple[Server, Server, Central, Devices]) -> None:
    local, central_broker, central, devices = brokers
    config = config_for(tmp_path, local, central_broker, status_interval_s=1,
                        batch="max_records = 100\nmax_interval_ms = 100\nmax_inflight_batches = 8\n")
    messages, expected, reasons = build_traffic()
    collector = Collector(config)
    collector.start()
    try:
        devices.publish_all(messages)
        wait_until(lambda: collector.counters["received_messages"] == len(messages), 30,
                   "collector to receive every device message")
        assert collector.wait_idle(timeout_s=30)
        wait_until(lambda: len(central.records()) >= len(expected), 30, "central to receive every record")

        got = Counter(key(r) for r in central.records())
        assert set(got) == expected
        assert max(got.values()) == 1, "a record arrived twice"
        validator = Validator()
        for payload in central.batches:
            assert len(payload) <= CONTRACT.limits.max_payload_bytes
            header, valid, rejected = validator.envelope(payload, now_ms=now_ms())
            assert rejected == [] and header is not None
            assert {k: header[k] for k in IDS} == IDS
            assert 1 <= len(valid) <= 100

        rows = [json.loads(line) for line in config.dead_letters.path.read_text().splitlines()]
        assert Counter(r["reason"] for r in rows) == reasons
        assert all(r["source"] == "gateway:c-0001-gw1" and r["topic"].startswith("fleetpulse/v1/devices/")
                   and r["detail"] for r in rows)
        counters = collector.counters
        assert counters["dropped_records"] == dict(reasons)
        assert counters["dead_letters"] == 51 and counters["errors"] == 0
        assert counters["sent_records"] == len(expected)
        assert counters["received_records"] == len(expected) + 51

        wait_until(lambda: (central.last_status() or {}).get("counters", {}).get("sent_records") == len(expected),
                   10, "a status message with the final counters")
        status = central.last_status()
        assert status is not None and status["state"] == "online"
        assert {k: status[k] for k in IDS} == IDS and status["v"] == 1
        assert status["counters"]["dead_letters"] == 51
    finally:
        assert collector.stop(timeout_s=10)


def test_stop_drains_records_received_right_before_it(
        tmp_path: Path, brokers: tuple[Server, Server, Central, Devices]) -> None:
    local, central_broker, central, devices = brokers
    # Nothing would flush on its own for a minute: only the drain can send these.
    config = config_for(tmp_path, local, central_broker,
                        batch="max_records = 5000\nmax_interval_ms = 60000\nmax_inflight_batches = 4\n")
    base = now_ms() - 60_000
    messages = [(f"dev-{d}", json.dumps([record(f"dev-{d}", s, ts_ms=base + s) for s in range(10)]).encode())
                for d in range(30)]
    collector = Collector(config)
    collector.start()
    devices.publish_all(messages)
    wait_until(lambda: collector.counters["received_records"] == 300, 30, "300 records received")
    # On disk and acknowledged to the local broker, not yet sent.
    wait_until(lambda: collector.backlog_records == 300, 10, "300 records spooled")
    assert central.records() == []
    assert collector.stop(timeout_s=10) is True
    wait_until(lambda: len(central.records()) >= 300, 10, "drained records at the central broker")
    assert sorted(key(r) for r in central.records()) == sorted(
        (f"dev-{d}", 1, s) for d in range(30) for s in range(10))

    # The retained status says offline, with the final counters.
    late = Central(central_broker.port, client_id="test-central-late")
    try:
        wait_until(lambda: late.last_status() is not None, 10, "retained status")
        with late.lock:
            status, retained = late.statuses[-1]
        assert retained and status["state"] == "offline"
        assert status["counters"]["sent_records"] == 300
    finally:
        late.close()

    # The drained messages were acknowledged on the local broker before the
    # disconnect: a new collector with the same session gets none of them again.
    again = Collector(config_for(tmp_path, local, central_broker,
                                 batch="max_records = 100\nmax_interval_ms = 50\nmax_inflight_batches = 4\n"))
    assert again.config.local.client_id == config.local.client_id
    again.start()
    try:
        devices.publish_all([("dev-marker", json.dumps(record("dev-marker", 0, ts_ms=base)).encode())])
        wait_until(lambda: ("dev-marker", 1, 0) in {key(r) for r in central.records()}, 10, "marker")
        assert again.counters["received_messages"] == 1
    finally:
        assert again.stop(timeout_s=10)


def test_nothing_is_lost_when_the_central_broker_restarts(
        tmp_path: Path, brokers: tuple[Server, Server, Central, Devices]) -> None:
    local, central_broker, central, devices = brokers
    config = config_for(tmp_path, local, central_broker,
                        batch="max_records = 50\nmax_interval_ms = 50\nmax_inflight_batches = 4\n")
    # A persistent subscriber: the central broker queues for it across the restart.
    central.close()
    central = Central(central_broker.port, client_id="test-central-persistent", persistent=True)
    collector = Collector(config)
    collector.start()
    base = now_ms() - 60_000
    first = [(f"dev-{d}", json.dumps([record(f"dev-{d}", s, ts_ms=base) for s in range(5)]).encode())
             for d in range(20)]
    second = [(f"dev-{d}", json.dumps([record(f"dev-{d}", s, ts_ms=base) for s in range(5, 10)]).encode())
              for d in range(20)]
    try:
        devices.publish_all(first)
        wait_until(lambda: len(central.records()) >= 100, 20, "first wave at the central broker")
        central.close()
        central_broker.stop()
        # While the central broker is down the collector keeps spooling (and
        # acknowledging the device side); paho holds the few batches in flight.
        devices.publish_all(second)
        wait_until(lambda: collector.counters["spooled_records"] == 200, 20, "second wave spooled")
        assert collector.backlog_records > 0
        before = central.records()
        central_broker.start()
        central = Central(central_broker.port, client_id="test-central-persistent", persistent=True)
        assert collector.wait_idle(timeout_s=40)
        assert collector.counters["reconnects"] >= 1
        expected = {(f"dev-{d}", 1, s) for d in range(20) for s in range(10)}
        wait_until(lambda: {key(r) for r in before + central.records()} >= expected, 20,
                   "every record at the central broker (duplicates allowed)")
        assert {key(r) for r in before + central.records()} == expected
        assert collector.counters["sent_records"] >= 200
    finally:
        assert collector.stop(timeout_s=10)
        central.close()


def _run_cli(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "fleetpulse", "gateway", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=err,
        )


def test_cli_runs_until_sigterm_then_drains_and_exits_0(
        tmp_path: Path, brokers: tuple[Server, Server, Central, Devices]) -> None:
    local, central_broker, central, devices = brokers
    path = write_config(tmp_path, local_port=local.port, upstream_port=central_broker.port,
                        status_interval_s=1,
                        batch="max_records = 5000\nmax_interval_ms = 60000\nmax_inflight_batches = 4\n")
    log = tmp_path / "stderr.log"
    proc = _run_cli(path, log)
    try:
        wait_until(lambda: (central.last_status() or {}).get("state") == "online", 20, "gateway online")
        base = now_ms() - 60_000
        devices.publish_all([("dev-1", json.dumps([record("dev-1", s, ts_ms=base) for s in range(20)]).encode())])
        # Received (per its status counters) but not sent: the batch is open for a minute.
        wait_until(lambda: (central.last_status() or {}).get("counters", {}).get("received_records") == 20,
                   20, "the records at the gateway")
        assert central.records() == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "draining" in text and "stopped; counters" in text
    wait_until(lambda: len(central.records()) == 20, 10, "the drained batch")
    wait_until(lambda: (central.last_status() or {}).get("state") == "offline", 10, "gateway offline")


def test_last_will_marks_a_vanished_gateway_offline(
        tmp_path: Path, brokers: tuple[Server, Server, Central, Devices]) -> None:
    local, central_broker, central, devices = brokers
    path = write_config(tmp_path, local_port=local.port, upstream_port=central_broker.port)
    proc = _run_cli(path, tmp_path / "stderr.log")
    try:
        wait_until(lambda: (central.last_status() or {}).get("state") == "online", 20, "gateway online")
        proc.kill()  # no DISCONNECT: the broker publishes the Will
        proc.wait()
        wait_until(lambda: (central.last_status() or {}).get("state") == "offline", 10, "Will published")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_spools_while_upstream_is_unreachable_and_delivers_after_a_restart(
        tmp_path: Path, brokers: tuple[Server, Server, Central, Devices]) -> None:
    local, central_broker, central, devices = brokers
    port = free_port()
    path = write_config(tmp_path, local_port=local.port, upstream_port=port,
                        extra_upstream="drain_timeout_s = 1\n")
    log = tmp_path / "stderr.log"
    proc = _run_cli(path, log)
    base = now_ms() - 60_000
    try:
        wait_until(lambda: f"upstream broker 127.0.0.1:{port} unreachable" in log.read_text(), 20,
                   "the unreachable-broker log line")
        assert "spooling" in log.read_text()
        devices.publish_all([("dev-1", json.dumps([record("dev-1", s, ts_ms=base) for s in range(5)]).encode())])
        wait_until(lambda: sum(f.stat().st_size for f in (tmp_path / "spool" / "c-0001-gw1").glob("*.seg")) > 0, 20,
                   "the records in the spool")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0  # a drain that times out loses nothing
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "5 records stay in the spool" in log.read_text()
    # The uplink is back (here: the config now points at a reachable broker).
    path.write_text(path.read_text().replace(f"port = {port}", f"port = {central_broker.port}"))
    proc = _run_cli(path, tmp_path / "stderr2.log")
    try:
        wait_until(lambda: len(central.records()) == 5, 20, "the spooled records upstream")
        assert sorted(key(r) for r in central.records()) == [("dev-1", 1, s) for s in range(5)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_gzip_batches_arrive_compressed_and_decode_with_the_shared_validator(
        tmp_path: Path, brokers: tuple[Server, Server, Central, Devices]) -> None:
    local, central_broker, central, devices = brokers
    config = config_for(tmp_path, local, central_broker,
                        batch='max_records = 200\nmax_interval_ms = 50\ncompression = "gzip"\n')
    base = now_ms() - 60_000
    collector = Collector(config)
    collector.start()
    try:
        devices.publish_all([(f"dev-{d}", json.dumps([record(f"dev-{d}", s, ts_ms=base + s) for s in range(50)]).encode())
                             for d in range(4)])
        assert collector.wait_idle(timeout_s=20)
        wait_until(lambda: len(central.records()) == 200, 10, "the 200 records at the subscriber")
    finally:
        assert collector.stop(timeout_s=10)
    with central.lock:
        payloads = list(central.batches)
    assert payloads and all(p[:2] == b"\x1f\x8b" for p in payloads)
    validator = Validator(CONTRACT)
    keys = set()
    for payload in payloads:
        header, valid, rejected = validator.envelope(payload, now_ms=now_ms())
        assert header is not None and rejected == []
        keys.update(key(r) for r in valid)
    assert keys == {(f"dev-{d}", 1, s) for d in range(4) for s in range(50)}
    raw = sum(len(gzip.decompress(p)) for p in payloads)
    assert sum(len(p) for p in payloads) < raw / 3  # it is worth it on a metered uplink
