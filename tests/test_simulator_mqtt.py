"""The simulator publishing to a real Mosquitto: every message arrives, and validates."""

from __future__ import annotations

import threading
from datetime import date
from typing import Any

import pytest
from paho.mqtt.client import CallbackAPIVersion, Client, MQTTMessage

from fleetpulse import cli as fleetpulse_cli
from fleetpulse.devices.simulator.generate import TelemetryGenerator
from fleetpulse.devices.simulator.publish import MqttSink
from fleetpulse.devices.simulator.simulation import SimulationConfig, simulate
from fleetpulse.schemas import Validator

from .servers import Server, wait_until

pytestmark = pytest.mark.integration


class Subscriber:
    """A paho client that keeps every message published under ``sim/#``."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = Client(CallbackAPIVersion.VERSION2, client_id="test-simulator-subscriber")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_connect = lambda client, *args: client.subscribe("sim/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(self._subscribed.is_set, 10, "the subscription to sim/#")

    def _on_message(self, client: Any, userdata: Any, message: MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload))

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(mosquitto: Server):
    sub = Subscriber(mosquitto.port)
    yield sub
    sub.close()


def test_simulated_fleet_arrives_complete_and_valid(mosquitto: Server, subscriber: Subscriber) -> None:
    config = SimulationConfig(seed=5, customers=8, days=6, malformed_per_day=3)
    fleet = config.build_fleet()
    expected = [m for m in TelemetryGenerator(fleet, malformed_per_day=3) if not m.withheld]
    sink = MqttSink("127.0.0.1", mosquitto.port, max_inflight=20)
    summary = simulate(config, sink, fleet=fleet)

    # simulate() returned only after every PUBACK, and the count is exact.
    assert sink.sent == summary.messages_sent == len(expected)
    wait_until(lambda: subscriber.count() >= len(expected), 30, f"{len(expected)} messages")
    assert subscriber.count() == len(expected)

    validator = Validator()
    valid_records = 0
    rejected_messages = 0
    offline = {(o.gateway_id, d) for o in fleet.outages for d in range(o.first_day, o.last_day + 1)}
    assert offline
    by_topic = {m.prefixed_topic for m in expected}
    for topic, payload in subscriber.messages:
        assert topic in by_topic
        valid, rejected = validator.device_payload(payload)
        if rejected:
            assert valid == [] and len(rejected) == 1
            rejected_messages += 1
            continue
        valid_records += len(valid)
        gateway_id = topic.split("/")[1]
        first_epoch_day = (fleet.start_date - date(1970, 1, 1)).days
        days = {r["ts_ms"] // 86_400_000 - first_epoch_day for r in valid}
        assert not any((gateway_id, d) in offline for d in days)
    assert rejected_messages == summary.malformed_messages == 3 * config.days
    assert valid_records == summary.records_sent


def test_cli_publishes_to_the_broker(mosquitto: Server, subscriber: Subscriber, tmp_path, capsys) -> None:
    code = fleetpulse_cli.main(
        ["simulate", "--customers", "2", "--days", "2", "--broker", f"127.0.0.1:{mosquitto.port}", "--out", str(tmp_path)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    sent = int(printed.split("sent ")[1].split(" messages")[0])
    assert sent > 0
    wait_until(lambda: subscriber.count() >= sent, 30, f"{sent} messages")
    assert subscriber.count() == sent
    assert f"port = {mosquitto.port}" in (tmp_path / "gateways" / "c-0001-gw1.toml").read_text()
